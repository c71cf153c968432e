#!/usr/bin/env python3
"""Real grpcio client for taptest.Echo, sending GitLab-like metadata.

Usage: .peers/venv/bin/python Tests/Peers/echo_client.py --target unix:/abs/echo.sock \
           --scenario NAME [--count N] [--correlation-id ID] [--auth-hex HEX64] \
           [--trace-id HEX32 [--parent-span-id HEX16]] [--header k=v ...] [--authority A] [--timing]

Prints one JSON line per run (sorted keys, deterministic unless --timing): the same
scenario run directly and through a byte-forwarding proxy prints the same bytes.
Exit 0 when every run ended as expected, 1 otherwise.
"""
import argparse
import json
import os
import queue
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

peerlib.import_gen()
import grpc  # noqa: E402
import taptest_pb2 as pb  # noqa: E402
import taptest_pb2_grpc  # noqa: E402

KiB, MiB = 1024, 1024 * 1024
ERROR_MESSAGE = "bad input: 100% wrong \u2013 \u00fcn\u00efcode"
BASE_KEYS = ["authorization", "gitaly-feature-foo", "gitaly-session-id", "user_id", "username",
             "x-gitlab-client-name", "x-gitlab-correlation-id"]


def payload(size, seed):
    """Deterministic request bytes."""
    block = bytes((i * 31 + seed) & 0xFF for i in range(256))
    return (block * (size // 256 + 1))[:size]


class Result:
    def __init__(self, scenario, method, expected):
        self.scenario, self.method, self.expected = scenario, method, expected
        self.replies = peerlib.Digest()
        self.requests = peerlib.Digest()
        self.last = None
        self.sequences_ok = True
        self.code = None
        self.details = ""
        self.initial = []
        self.trailing = []
        self.failed = []

    def request(self, req):
        self.requests.add(req.payload)
        return req

    def reply(self, rep):
        if rep.sequence != self.replies.count:
            self.sequences_ok = False
        self.replies.add(rep.payload)
        self.last = rep

    def finish(self, call):
        """call: a grpc Call (or RpcError, which is one)."""
        self.code = call.code()
        self.details = call.details() or ""
        self.initial = peerlib.stable_metadata(call.initial_metadata())
        self.trailing = peerlib.stable_metadata(call.trailing_metadata())

    def check(self, cond, what):
        if not cond:
            self.failed.append(what)

    def as_dict(self):
        last = self.last or pb.EchoReply()
        status = peerlib.status_name(self.code)
        self.check(status == self.expected, "status %s != expected %s" % (status, self.expected))
        self.check(self.sequences_ok, "reply sequence numbers out of order")
        return {
            "scenario": self.scenario,
            "method": self.method,
            "expected": self.expected,
            "status": status,
            "details": self.details,
            "requests": self.requests.count,
            "request_bytes": self.requests.nbytes,
            "replies": self.replies.count,
            "reply_bytes": self.replies.nbytes,
            "reply_sha256": self.replies.hexdigest(),
            "received_bytes": last.received_bytes,
            "received_messages": last.received_messages,
            "metadata_keys": list(last.metadata_keys),
            "initial_metadata": self.initial,
            "trailing_metadata": self.trailing,
            "ok": not self.failed,
            "failed": self.failed,
        }


def has_echo_headers(r):
    return ["x-echo-server", "1"] in r.initial


def unary_call(stub, r, req, md, timeout=None):
    try:
        rep, call = stub.Unary.with_call(r.request(req), metadata=md, timeout=timeout)
        r.reply(rep)
        r.finish(call)
    except grpc.RpcError as e:
        r.finish(e)


def sc_unary(stub, md, args):
    r = Result("unary", "/taptest.Echo/Unary", "OK")
    unary_call(stub, r, pb.EchoRequest(payload=b"hello gitaly-tap"), md)
    r.check(r.replies.count == 1 and r.replies.nbytes == 16, "one 16-byte reply")
    r.check(has_echo_headers(r), "x-echo-server in initial metadata")
    r.check(["x-echo-trailer", "done"] in r.trailing, "x-echo-trailer in trailers")
    return r


def sc_unary_large(stub, md, args):
    r = Result("unary_large", "/taptest.Echo/Unary", "OK")
    unary_call(stub, r, pb.EchoRequest(payload=payload(5 * MiB, 1), reply_size=5 * MiB), md)
    r.check(r.replies.nbytes == 5 * MiB, "5 MiB reply")
    r.check(r.last is not None and r.last.received_bytes == 5 * MiB, "server got 5 MiB")
    return r


def stream_call(r, call, consume):
    try:
        consume(call)
    except grpc.RpcError:
        pass
    r.finish(call)


def sc_client_stream(stub, md, args):
    r = Result("client_stream", "/taptest.Echo/ClientStream", "OK")

    def reqs():
        for i in range(100):
            yield r.request(pb.EchoRequest(payload=payload(64 * KiB, i)))

    try:
        rep, call = stub.ClientStream.with_call(reqs(), metadata=md)
        r.reply(rep)
        r.finish(call)
    except grpc.RpcError as e:
        r.finish(e)
    r.check(r.last is not None and r.last.received_messages == 100
            and r.last.received_bytes == 100 * 64 * KiB, "server got 100 x 64 KiB")
    return r


def sc_server_stream(stub, md, args):
    r = Result("server_stream", "/taptest.Echo/ServerStream", "OK")
    call = stub.ServerStream(r.request(pb.EchoRequest(reply_count=200, reply_size=32 * KiB)),
                             metadata=md)
    stream_call(r, call, lambda c: [r.reply(x) for x in c])
    r.check(r.replies.count == 200 and r.replies.nbytes == 200 * 32 * KiB, "200 x 32 KiB replies")
    return r


def sc_bidi(stub, md, args):
    r = Result("bidi", "/taptest.Echo/Bidi", "OK")
    q = queue.Queue()
    n = 50

    def reqs():
        while True:
            item = q.get()
            if item is None:
                return
            yield item

    q.put(r.request(pb.EchoRequest(payload=payload(1 * KiB, 0))))
    # A deadline, so a peer that never answers (a stand-in waiting for the end of the request) fails the call
    # instead of hanging the test.
    call = stub.Bidi(reqs(), metadata=md, timeout=60)

    def consume(c):
        for rep in c:
            r.reply(rep)
            i = r.replies.count
            # --bidi-diverge-at K: request message K (from 0) differs from the usual one (a stand-in test).
            seed = i + 1000 if i == args.bidi_diverge_at else i
            q.put(r.request(pb.EchoRequest(payload=payload(1 * KiB, seed))) if i < n else None)

    try:
        stream_call(r, call, consume)
    finally:
        q.put(None)
    r.check(r.replies.count == n and r.last.received_messages == n, "50 ping-pong pairs")
    return r


def sc_metadata(stub, md, args):
    r = Result("metadata", "/taptest.Echo/Unary", "OK")
    unary_call(stub, r, pb.EchoRequest(payload=b"md", echo_metadata=True), md)
    want = set(BASE_KEYS) | ({"traceparent"} if args.trace_id else set())
    want |= {k for k, _ in md}
    got = set(r.last.metadata_keys) if r.last else set()
    r.check(want <= got, "server missed metadata keys %s" % sorted(want - got))
    return r


def sc_error(stub, md, args):
    r = Result("error", "/taptest.Echo/ServerStream", "INVALID_ARGUMENT")
    req = pb.EchoRequest(reply_count=3, reply_size=100, status_code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                         status_message=ERROR_MESSAGE, abort_after=1)
    call = stub.ServerStream(r.request(req), metadata=md)
    stream_call(r, call, lambda c: [r.reply(x) for x in c])
    r.check(r.replies.count == 1, "one reply before the error")
    r.check(r.details == ERROR_MESSAGE, "details round-trip")
    r.check(has_echo_headers(r), "x-echo-server in initial metadata")
    return r


def sc_trailers_only(stub, md, args):
    r = Result("trailers_only", "/taptest.Echo/Unary", "NOT_FOUND")
    req = pb.EchoRequest(payload=b"x", status_code=grpc.StatusCode.NOT_FOUND.value[0],
                         status_message="no such thing")
    unary_call(stub, r, req, md)
    r.check(r.replies.count == 0, "no reply")
    r.check(r.details == "no such thing", "details")
    r.check(["x-echo-server", "1"] in r.trailing, "x-echo-server in the Trailers-Only block")
    return r


def sc_cancel(stub, md, args):
    r = Result("cancel", "/taptest.Echo/ServerStream", "CANCELLED")
    req = pb.EchoRequest(reply_count=20, reply_size=1 * KiB, interval_ms=500)
    call = stub.ServerStream(r.request(req), metadata=md)

    def consume(c):
        for rep in c:
            r.reply(rep)
            c.cancel()

    stream_call(r, call, consume)
    r.check(r.replies.count == 1, "cancelled after the first reply")
    return r


def sc_deadline(stub, md, args):
    r = Result("deadline", "/taptest.Echo/Unary", "DEADLINE_EXCEEDED")
    unary_call(stub, r, pb.EchoRequest(payload=b"slow", delay_ms=3000), md, timeout=0.3)
    r.check(r.replies.count == 0, "no reply")
    return r


def sc_slow_stream(stub, md, args):
    r = Result("slow_stream", "/taptest.Echo/ServerStream", "OK")
    # 8 s: long enough that a test on a loaded machine sees the call open before it ends.
    req = pb.EchoRequest(reply_count=40, reply_size=4 * KiB, interval_ms=200)
    call = stub.ServerStream(r.request(req), metadata=md)
    stream_call(r, call, lambda c: [r.reply(x) for x in c])
    r.check(r.replies.count == 40, "40 replies over 8 s")
    return r


# Not part of "all": slow on purpose (shutdown tests).
EXTRA_SCENARIOS = {
    "slow_stream": sc_slow_stream,
}

SCENARIOS = {
    "unary": sc_unary,
    "unary_large": sc_unary_large,
    "client_stream": sc_client_stream,
    "server_stream": sc_server_stream,
    "bidi": sc_bidi,
    "metadata": sc_metadata,
    "error": sc_error,
    "trailers_only": sc_trailers_only,
    "cancel": sc_cancel,
    "deadline": sc_deadline,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    peerlib.add_client_args(ap)
    ap.add_argument("--scenario", required=True, choices=sorted(SCENARIOS) + sorted(EXTRA_SCENARIOS) + ["all"])
    ap.add_argument("--count", type=int, default=1, help="repeat N times (one line per run)")
    ap.add_argument("--bidi-diverge-at", type=int, default=-1,
                    help="bidi: make request message K (from 0) differ from the usual one")
    args = ap.parse_args()

    md = peerlib.client_metadata(args)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    all_ok = True
    with peerlib.open_channel(grpc, args) as ch:
        stub = taptest_pb2_grpc.EchoStub(ch)
        for run in range(args.count):
            for name in names:
                t0 = time.perf_counter()
                out = {**SCENARIOS, **EXTRA_SCENARIOS}[name](stub, md, args).as_dict()
                out["run"] = run
                if args.timing:
                    out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 3)
                all_ok &= out["ok"]
                print(json.dumps(out, sort_keys=True, separators=(",", ":")), flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
