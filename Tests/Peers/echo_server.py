#!/usr/bin/env python3
"""Real grpcio server for the taptest.Echo service (Tests/Peers/proto/taptest.proto).

Usage: .peers/venv/bin/python Tests/Peers/echo_server.py --listen unix:/abs/echo.sock \
           [--listen tcp://127.0.0.1:0 ...] [--workers 64]

When every listener is bound it prints exactly one line to stdout and flushes:
    READY {"listen": ["unix:/abs/echo.sock", "tcp://127.0.0.1:40123"], "pid": 1234}
(tcp port 0 is replaced by the bound port). SIGTERM/SIGINT stop it (exit 0).

Every call gets initial metadata ``x-echo-server: 1`` (sent just before the first
reply message) and trailing metadata ``x-echo-trailer: done`` plus
``x-echo-trailer-bin`` (binary). A call that aborts before any message is a
Trailers-Only response: then ``x-echo-server: 1`` travels in the trailers.
"""
import argparse
import json
import os
import signal
import stat
import sys
import threading
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

peerlib.import_gen()
import grpc  # noqa: E402
import taptest_pb2  # noqa: E402
import taptest_pb2_grpc  # noqa: E402

INITIAL_MD = (("x-echo-server", "1"),)
TRAILER_BIN = bytes([0x00, 0x01, 0xFE, 0xFF]) + "tap".encode()
HIDDEN_KEYS = {"user-agent", "te", "content-type"}

_PATTERN = None


def pattern_bytes(size, seq):
    """Deterministic, incompressible-looking bytes (sha256 chain), rotated by seq."""
    global _PATTERN
    if _PATTERN is None:
        import hashlib
        blocks, h = [], b"taptest"
        for _ in range(2048):  # 64 KiB
            h = hashlib.sha256(h).digest()
            blocks.append(h)
        _PATTERN = b"".join(blocks)
    if size <= 0:
        return b""
    start = (seq * 977) % len(_PATTERN)
    base = _PATTERN[start:] + _PATTERN[:start]
    reps = size // len(base) + 1
    return (base * reps)[:size]


def received_keys(context):
    keys = set()
    for k, _ in context.invocation_metadata():
        if k.startswith(":") or k.startswith("grpc-") or k in HIDDEN_KEYS:
            continue
        keys.add(k)
    return sorted(keys)


def sleep_ms(context, ms):
    """Sleep, ending early when the call is cancelled or times out."""
    end = time.monotonic() + ms / 1000.0
    while context.is_active():
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.01))
    return False


class Call:
    """Per-call state: initial metadata sent lazily, so an early abort is Trailers-Only."""

    def __init__(self, context):
        self.ctx = context
        self.sent_headers = False
        self.sent = 0
        self.keys = None

    def trailers(self, extra=()):
        md = [("x-echo-trailer", "done"), ("x-echo-trailer-bin", TRAILER_BIN)]
        if not self.sent_headers:
            md = list(INITIAL_MD) + md
        self.ctx.set_trailing_metadata(tuple(md) + tuple(extra))

    def abort(self, req):
        self.trailers()
        self.ctx.abort(_CODES.get(req.status_code, grpc.StatusCode.UNKNOWN), req.status_message)

    def reply(self, req, seq, received_bytes, received_messages):
        if not self.sent_headers:
            self.ctx.send_initial_metadata(INITIAL_MD)
            self.sent_headers = True
        payload = pattern_bytes(req.reply_size, seq) if req.reply_size else req.payload
        rep = taptest_pb2.EchoReply(payload=payload, received_bytes=received_bytes,
                                    received_messages=received_messages, sequence=seq)
        if req.echo_metadata:
            if self.keys is None:
                self.keys = received_keys(self.ctx)
            rep.metadata_keys.extend(self.keys)
        self.sent += 1
        return rep


_CODES = {c.value[0]: c for c in grpc.StatusCode}


class Echo(taptest_pb2_grpc.EchoServicer):
    def Unary(self, req, context):
        call = Call(context)
        if req.delay_ms and not sleep_ms(context, req.delay_ms):
            return taptest_pb2.EchoReply()
        if req.status_code:
            call.abort(req)
        rep = call.reply(req, 0, len(req.payload), 1)
        call.trailers()
        return rep

    def ClientStream(self, it, context):
        call = Call(context)
        first, nbytes, nmsg = None, 0, 0
        for req in it:
            if first is None:
                first = req
            nbytes += len(req.payload)
            nmsg += 1
        first = first or taptest_pb2.EchoRequest()
        if first.delay_ms and not sleep_ms(context, first.delay_ms):
            return taptest_pb2.EchoReply()
        if first.status_code:
            call.abort(first)
        shape = taptest_pb2.EchoRequest()
        shape.CopyFrom(first)
        if not shape.reply_size:
            shape.payload = b""
        rep = call.reply(shape, 0, nbytes, nmsg)
        call.trailers()
        return rep

    def ServerStream(self, req, context):
        call = Call(context)
        if req.delay_ms and not sleep_ms(context, req.delay_ms):
            return
        count = req.reply_count or 1
        for i in range(count):
            if req.status_code and i == req.abort_after:
                call.abort(req)
            if i and req.interval_ms and not sleep_ms(context, req.interval_ms):
                return
            yield call.reply(req, i, len(req.payload), 1)
        if req.status_code:
            call.abort(req)
        call.trailers()

    def Bidi(self, it, context):
        call = Call(context)
        nbytes = nmsg = 0
        for req in it:
            nbytes += len(req.payload)
            nmsg += 1
            if req.delay_ms and not sleep_ms(context, req.delay_ms):
                return
            if req.status_code:
                call.abort(req)
            yield call.reply(req, call.sent, nbytes, nmsg)
        call.trailers()


def bind(server, addr, tls=None):
    if addr.startswith("tls://"):
        if tls is None:
            sys.exit("echo_server: tls:// listen needs --tls-cert and --tls-key")
        hostport = addr[len("tls://"):]
        host, _, port = hostport.rpartition(":")
        bound = server.add_secure_port(hostport, tls)
        if not bound:
            sys.exit("echo_server: cannot bind %s" % addr)
        return "tls://%s:%d" % (host, bound)
    if addr.startswith("unix:"):
        path = addr[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            sys.exit("echo_server: unix path must be absolute: %r" % addr)
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # stale socket from an earlier run
        except FileNotFoundError:
            pass
        server.add_insecure_port("unix:" + path)
        return "unix:" + path
    if addr.startswith("tcp://"):
        hostport = addr[len("tcp://"):]
        host, _, port = hostport.rpartition(":")
        bound = server.add_insecure_port(hostport)
        if not bound:
            sys.exit("echo_server: cannot bind %s" % addr)
        return "tcp://%s:%d" % (host, bound)
    sys.exit("echo_server: --listen wants unix:/abs/path or tcp://host:port, got %r" % addr)


def main():
    # Test runners may start us with SIGTERM/SIGINT blocked (children inherit the mask); unblock them so a
    # signal stops us and the processes we start.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", action="append", required=True,
                    help="unix:/abs/path or tcp://127.0.0.1:PORT (port 0: any); repeatable")
    ap.add_argument("--workers", type=int, default=64, help="thread pool size")
    ap.add_argument("--tls-cert", help="PEM certificate for tls:// listen addresses")
    ap.add_argument("--tls-key", help="PEM key for tls:// listen addresses")
    args = ap.parse_args()
    tls = None
    if args.tls_cert and args.tls_key:
        with open(args.tls_key, "rb") as k, open(args.tls_cert, "rb") as c:
            tls = grpc.ssl_server_credentials([(k.read(), c.read())])

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.workers),
        options=[
            ("grpc.max_send_message_length", peerlib.MAX_MESSAGE),
            ("grpc.max_receive_message_length", peerlib.MAX_MESSAGE),
            ("grpc.so_reuseport", 0),
        ],
    )
    taptest_pb2_grpc.add_EchoServicer_to_server(Echo(), server)
    try:
        bound = [bind(server, a, tls) for a in args.listen]
    except RuntimeError as e:
        sys.exit("echo_server: bind failed: %s" % e)
    server.start()

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    print("READY " + json.dumps({"listen": bound, "pid": os.getpid()}), flush=True)
    # A timed wait lets the main thread run the signal handler promptly.
    while not done.wait(0.1):
        pass
    server.stop(grace=0).wait()
    for a in bound:
        if a.startswith("unix:"):
            try:
                os.unlink(a[len("unix:"):])
            except OSError:
                pass


if __name__ == "__main__":
    main()
