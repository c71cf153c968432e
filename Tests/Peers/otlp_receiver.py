"""An OTLP/HTTP trace receiver for the exporter tests: decodes every request with the official
opentelemetry-proto definitions (PyPI ``opentelemetry-proto``) and keeps the decoded spans.

    otlp_receiver.py --listen tcp://127.0.0.1:0 [--out spans.jsonl]

POST /v1/traces with ``Content-Type: application/x-protobuf`` is parsed with
``ExportTraceServiceRequest.FromString``; ``application/json`` with ``google.protobuf.json_format``
after the OTLP/JSON id rule is applied (traceId/spanId/parentSpanId are hex in OTLP/JSON, where plain
proto3 JSON would expect base64): ids that are not lower/upper-case hex of the right length are a
decoding error; so is a field name that is not lowerCamelCase or an enum (kind, status code) given
by name (json_format alone would accept both), and json_format rejects unknown or misspelt names.
A request that does not decode is answered 400 and counted under ``decode_errors``.

Control (plain GET, answers JSON):
  /control/stats                      {"requests", "answered", "failed_answers", "spans", "decode_errors", "errors"}
  /control/spans                      every decoded span so far, as a JSON array (same objects as --out lines)
  /control/fail?status=503&count=N[&retry_after=S]   answer the next N trace requests with that status
  /control/delay?ms=N                 wait N ms before answering each trace request
  /control/reset                      forget spans and counters

Each decoded span (one JSON line in --out, appended, so a restarted receiver adds to the same file):
  {"encoding": "protobuf"|"json", "request": n, "resource": {key: value}, "scope": {"name", "version"},
   "traceId": hex32, "spanId": hex16, "parentSpanId": hex16|"", "flags": int, "name", "kind": int,
   "startTimeUnixNano": int, "endTimeUnixNano": int, "status": {"code": int, "message": str},
   "attributes": {key: {"type": "string"|"int"|"double"|"bool"|"array", "value": ...}},
   "events": [{"name", "timeUnixNano": int, "attributes": {...}}]}

Prints ``READY {"listen": ["tcp://127.0.0.1:PORT"], "url": "http://127.0.0.1:PORT", "pid": N}`` when
listening (stdout, one line); logs go to stderr. SIGTERM stops it (exit 0). Listening again on the
same port right after a stop works (SO_REUSEADDR), so a test can stop and restart the backend.
"""
import argparse
import base64
import json
import math
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

HEX = re.compile(r"^[0-9a-fA-F]*$")
ID_LENGTHS = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


class DecodeError(Exception):
    pass


def check_camel_case(node, path="$"):
    """OTLP/JSON senders MUST use lowerCamelCase field names and integer enums; json_format would also take
    the proto names and enum names."""
    if isinstance(node, dict):
        for key, value in node.items():
            if "_" in key or key[:1].isupper():
                raise DecodeError("field %s.%s is not lowerCamelCase" % (path, key))
            if key in ("kind", "code") and not isinstance(value, int):
                raise DecodeError("enum %s.%s is %r: OTLP/JSON enums are integers" % (path, key, value))
            check_camel_case(value, path + "." + key)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            check_camel_case(item, "%s[%d]" % (path, i))


def hex_ids_to_base64(node):
    """OTLP/JSON ids are hex; proto3 JSON bytes are base64: convert in place, checking the hex."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key in ID_LENGTHS and isinstance(value, str):
                if value == "" and key == "parentSpanId":
                    continue
                if len(value) != ID_LENGTHS[key] or not HEX.match(value):
                    raise DecodeError("%s %r is not %d hex digits" % (key, value, ID_LENGTHS[key]))
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            hex_ids_to_base64(item)


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return {"type": "string", "value": v.string_value}
    if kind == "int_value":
        return {"type": "int", "value": v.int_value}
    if kind == "double_value":
        d = v.double_value
        return {"type": "double", "value": d if math.isfinite(d) else str(d)}
    if kind == "bool_value":
        return {"type": "bool", "value": v.bool_value}
    if kind == "array_value":
        return {"type": "array", "value": [any_value(x) for x in v.array_value.values]}
    if kind is None:
        return {"type": "empty", "value": None}
    return {"type": kind, "value": str(v)}


def attributes(kvs):
    out = {}
    for kv in kvs:
        if kv.key in out:
            raise DecodeError("duplicate attribute key %r" % kv.key)
        out[kv.key] = any_value(kv.value)
    return out


def flatten(request, encoding, number):
    spans = []
    for rs in request.resource_spans:
        resource = {k: v["value"] for k, v in attributes(rs.resource.attributes).items()}
        for ss in rs.scope_spans:
            scope = {"name": ss.scope.name, "version": ss.scope.version}
            for s in ss.spans:
                if len(s.trace_id) != 16 or len(s.span_id) != 8:
                    raise DecodeError("span %r: trace_id %d bytes, span_id %d bytes" % (s.name, len(s.trace_id), len(s.span_id)))
                if s.parent_span_id and len(s.parent_span_id) != 8:
                    raise DecodeError("span %r: parent_span_id %d bytes" % (s.name, len(s.parent_span_id)))
                spans.append({
                    "encoding": encoding,
                    "request": number,
                    "resource": resource,
                    "scope": scope,
                    "traceId": s.trace_id.hex(),
                    "spanId": s.span_id.hex(),
                    "parentSpanId": s.parent_span_id.hex(),
                    "flags": s.flags,
                    "name": s.name,
                    "kind": s.kind,
                    "startTimeUnixNano": s.start_time_unix_nano,
                    "endTimeUnixNano": s.end_time_unix_nano,
                    "status": {"code": s.status.code, "message": s.status.message},
                    "attributes": attributes(s.attributes),
                    "events": [{"name": e.name, "timeUnixNano": e.time_unix_nano, "attributes": attributes(e.attributes)}
                               for e in s.events],
                })
    return spans


class Receiver:
    def __init__(self, out_path):
        self.lock = threading.Lock()
        self.out = open(out_path, "a", encoding="utf-8") if out_path else None
        self.reset()
        self.fail_status = 0
        self.fail_count = 0
        self.retry_after = None
        self.delay_ms = 0

    def reset(self):
        self.spans = []
        self.stats = {"requests": 0, "answered": 0, "failed_answers": 0, "spans": 0, "decode_errors": 0,
                      "errors": [], "encodings": {}}


def make_handler(rx):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("otlp_receiver: " + (fmt % args) + "\n")

        def reply(self, status, body, content_type="application/json", extra=()):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urlparse(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with rx.lock:
                if url.path == "/control/stats":
                    body = dict(rx.stats, queued_failures=rx.fail_count)
                elif url.path == "/control/spans":
                    body = rx.spans
                elif url.path == "/control/fail":
                    rx.fail_status = int(q.get("status", "503"))
                    rx.fail_count = int(q.get("count", "1"))
                    rx.retry_after = q.get("retry_after")
                    body = {"ok": True}
                elif url.path == "/control/delay":
                    rx.delay_ms = int(q.get("ms", "0"))
                    body = {"ok": True}
                elif url.path == "/control/reset":
                    rx.reset()
                    body = {"ok": True}
                else:
                    self.reply(404, b'{"error":"no such control path"}')
                    return
            self.reply(200, json.dumps(body).encode())

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length)
            if urlparse(self.path).path != "/v1/traces":
                self.reply(404, b'{"error":"only /v1/traces"}')
                return
            with rx.lock:
                rx.stats["requests"] += 1
                number = rx.stats["requests"]
                delay = rx.delay_ms
                fail = None
                if rx.fail_count > 0:
                    rx.fail_count -= 1
                    fail = (rx.fail_status, rx.retry_after)
            if delay:
                time.sleep(delay / 1000.0)
            if fail:
                with rx.lock:
                    rx.stats["failed_answers"] += 1
                extra = [("Retry-After", fail[1])] if fail[1] is not None else []
                self.reply(fail[0], b'{"error":"told to fail"}', extra=extra)
                return
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            try:
                if content_type == "application/x-protobuf":
                    encoding = "protobuf"
                    request = trace_service_pb2.ExportTraceServiceRequest.FromString(data)
                elif content_type == "application/json":
                    encoding = "json"
                    doc = json.loads(data.decode("utf-8"))
                    check_camel_case(doc)
                    hex_ids_to_base64(doc)
                    request = json_format.ParseDict(doc, trace_service_pb2.ExportTraceServiceRequest())
                else:
                    raise DecodeError("unsupported Content-Type %r" % content_type)
                spans = flatten(request, encoding, number)
            except Exception as e:  # noqa: BLE001 - every decoding failure is reported to the test
                with rx.lock:
                    rx.stats["decode_errors"] += 1
                    rx.stats["errors"].append("%s: %s" % (type(e).__name__, e))
                self.reply(400, json.dumps({"error": str(e)}).encode())
                return
            with rx.lock:
                rx.spans.extend(spans)
                rx.stats["spans"] += len(spans)
                rx.stats["answered"] += 1
                rx.stats["encodings"][encoding] = rx.stats["encodings"].get(encoding, 0) + 1
                if rx.out:
                    for s in spans:
                        rx.out.write(json.dumps(s, sort_keys=True) + "\n")
                    rx.out.flush()
            if encoding == "protobuf":
                self.reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                           content_type="application/x-protobuf")
            else:
                self.reply(200, b"{}")

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="tcp://127.0.0.1:0", help="tcp://host:port")
    parser.add_argument("--out", default=None, help="append decoded spans here as JSON lines")
    args = parser.parse_args()
    if not args.listen.startswith("tcp://"):
        sys.exit("otlp_receiver: --listen wants tcp://host:port")
    host, _, port = args.listen[len("tcp://"):].rpartition(":")
    rx = Receiver(args.out)
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((host, int(port)), make_handler(rx))

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A parent that blocks these signals (a test runner) passes its mask on: unblock, or SIGTERM never arrives.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    bound = server.server_address[1]
    print("READY " + json.dumps({"listen": ["tcp://%s:%d" % (host, bound)], "url": "http://%s:%d" % (host, bound),
                                 "pid": os.getpid()}), flush=True)
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
