#!/usr/bin/env python3
"""Regenerates the byte fixtures of Tests/TapWireTests from real grpcio traffic.

Usage (from the package root, after scripts/install-peers.sh):

    .peers/venv/bin/python Tests/TapWireTests/Fixtures/capture.py

For every scenario it starts `socat -r NAME.c2s.bin -R NAME.s2c.bin` between a real grpcio
client (one connection per scenario) and the real grpcio echo server (Tests/Peers/echo_server.py),
so each fixture pair is exactly the bytes of one HTTP/2 connection, per direction.

Scenarios are kept small (a few KB) because the tests replay each one split at every byte.
Everything that could vary between runs is pinned (token timestamp, payloads, correlation id),
except grpc-timeout (remaining time), PING payloads and :authority (grpcio sends the percent-encoded
socket path, which holds a temporary directory name); the tests check those loosely.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PEERS = os.path.join(REPO, "Tests", "Peers")
PYTHON = sys.executable
AUTH_TS = "1700000000"

# scenario name -> client command (echo_client.py scenario, or one of the small variants below)
SCENARIOS = {
    "unary": ["echo", "unary"],
    "error": ["echo", "error"],
    "trailers_only": ["echo", "trailers_only"],
    "cancel": ["echo", "cancel"],
    "metadata": ["echo", "metadata", "--trace-id", "4bf92f3577b34da6a3ce929d0e0e4736",
                 "--header", "x-tap-extra=percent%20kept"],
    "server_stream_small": ["small", "server_stream_small"],
    "bidi_small": ["small", "bidi_small"],
    "client_stream_small": ["small", "client_stream_small"],
    "several_calls": ["small", "several_calls"],
}


def small_client(name, target):
    """Small variants of the echo scenarios, calling the generated stubs directly."""
    sys.path.insert(0, PEERS)
    import peerlib

    peerlib.import_gen()
    import grpc
    import taptest_pb2 as pb
    import taptest_pb2_grpc

    md = [
        ("x-gitlab-correlation-id", peerlib.DEFAULT_CORRELATION_ID),
        ("x-gitlab-client-name", "gitlab-workhorse"),
        ("authorization", "Bearer v2.%s.%s" % (peerlib.DEFAULT_AUTH_HEX, AUTH_TS)),
    ]
    opts = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(peerlib.grpc_target(target), options=opts) as ch:
        stub = taptest_pb2_grpc.EchoStub(ch)
        if name == "server_stream_small":
            replies = list(stub.ServerStream(pb.EchoRequest(reply_count=5, reply_size=300), metadata=md))
            assert len(replies) == 5
        elif name == "bidi_small":
            reqs = [pb.EchoRequest(payload=bytes([i]) * 200) for i in range(4)]
            replies = list(stub.Bidi(iter(reqs), metadata=md))
            assert len(replies) == 4
        elif name == "client_stream_small":
            reqs = [pb.EchoRequest(payload=bytes([i]) * 100) for i in range(3)] + [pb.EchoRequest()]
            rep = stub.ClientStream(iter(reqs), metadata=md)
            assert rep.received_messages == 4
        elif name == "several_calls":
            # Three calls on one connection: the second and third header blocks lean on the
            # HPACK dynamic table filled by the first.
            stub.Unary(pb.EchoRequest(payload=b"one"), metadata=md)
            stub.Unary(pb.EchoRequest(payload=b"two"), metadata=md, timeout=30)
            try:
                stub.Unary(pb.EchoRequest(payload=b"x", status_code=5, status_message="gone"), metadata=md)
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND
        else:
            sys.exit("capture: unknown small scenario %r" % name)


def wait_for(path, timeout=10.0):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            sys.exit("capture: %s did not appear" % path)
        time.sleep(0.01)


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--small":
        small_client(sys.argv[2], sys.argv[3])
        return
    only = set(sys.argv[1:])
    tmp = tempfile.mkdtemp(prefix="tapwire-capture-")
    echo_sock = os.path.join(tmp, "echo.sock")
    server = subprocess.Popen([PYTHON, os.path.join(PEERS, "echo_server.py"), "--listen", "unix:" + echo_sock],
                              stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line.startswith("READY "):
            sys.exit("capture: echo server did not start")
        for name, how in SCENARIOS.items():
            if only and name not in only:
                continue
            relay = os.path.join(tmp, name + ".sock")
            c2s = os.path.join(HERE, name + ".c2s.bin")
            s2c = os.path.join(HERE, name + ".s2c.bin")
            socat = subprocess.Popen(["socat", "-r", c2s, "-R", s2c,
                                      "UNIX-LISTEN:" + relay, "UNIX-CONNECT:" + echo_sock])
            wait_for(relay)
            if how[0] == "echo":
                cmd = [PYTHON, os.path.join(PEERS, "echo_client.py"), "--target", "unix:" + relay,
                       "--auth-ts", AUTH_TS, "--scenario"] + how[1:]
            else:
                cmd = [PYTHON, os.path.abspath(__file__), "--small", how[1], "unix:" + relay]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            socat.wait(timeout=10)
            print("%-20s c2s %5d bytes, s2c %5d bytes" % (name, os.path.getsize(c2s), os.path.getsize(s2c)))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
