#!/usr/bin/env python3
"""A gRPC server that checks Gitaly's v2 authorization token, as Gitaly does.

Usage: .peers/venv/bin/python Tests/Peers/auth_server.py --listen unix:/abs/auth.sock --secret-file F

Every unary method (any path) answers with its request bytes when the call carries
`authorization: Bearer v2.<hex HMAC-SHA256(secret, ts)>.<ts>` with ts within 30 s of now;
otherwise it fails with UNAUTHENTICATED and says why. Prints
`READY {"listen": [...], "pid": N}` once serving.
"""
import argparse
import hashlib
import hmac
import json
import os
import signal
import sys
import time
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402

import grpc  # noqa: E402


def check(token, secret):
    if not token.startswith("Bearer v2."):
        return "not a v2 token"
    try:
        mac_hex, ts_text = token[len("Bearer v2."):].split(".")
        ts = int(ts_text)
    except ValueError:
        return "malformed v2 token"
    if abs(time.time() - ts) > 30:
        return "token timestamp out of range"
    want = hmac.new(secret, ts_text.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, mac_hex):
        return "bad signature"
    return None


class Handler(grpc.GenericRpcHandler):
    def __init__(self, secret):
        self.secret = secret

    def service(self, details):
        def answer(request, context):
            md = dict(context.invocation_metadata())
            why = check(md.get("authorization", ""), self.secret) if "authorization" in md \
                else "no authorization metadata"
            if why:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "auth_server: " + why)
            return request
        return grpc.unary_unary_rpc_method_handler(answer)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--secret-file", required=True)
    args = ap.parse_args()
    # Test runners may start us with SIGTERM/SIGINT blocked (children inherit the mask): unblock them.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    with open(args.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Handler(secret),))
    server.add_insecure_port(peerlib.grpc_target(args.listen))
    server.start()
    print("READY " + json.dumps({"listen": [args.listen], "pid": os.getpid()}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
