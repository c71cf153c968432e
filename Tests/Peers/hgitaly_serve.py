#!/usr/bin/env python3
"""Start HGitaly (`hg hgitaly-serve`) on a repositories root and say when it is ready.

Usage: .peers/venv/bin/python Tests/Peers/hgitaly_serve.py --root DIR \
           --listen unix:/abs/hgitaly.sock [--listen tcp://127.0.0.1:0 ...] [--setup]
           [--ready-timeout 60]

Runs, as a child process:
    HGRCPATH=DIR/hgrc .peers/venv/bin/hg hgitaly-serve --listen URL [--listen URL ...]
(DIR/hgrc is written by hgitaly_setup.py; --setup runs that first). A tcp port 0 is
replaced by a free port, reserved with SO_REUSEPORT until HGitaly has bound it (HGitaly
binds with SO_REUSEPORT itself). When grpc.health.v1.Health/Check answers SERVING on
every address it prints exactly one line to stdout and flushes:
    READY {"listen": [...], "pid": <this wrapper>, "server_pid": <hg>, "startup_ms": N}
SIGTERM/SIGINT are forwarded to HGitaly (which stops at once: the hgrc sets a 0 s grace);
the wrapper exits when HGitaly does. HGitaly dies with the wrapper (PR_SET_PDEATHSIG).
HGitaly's own output goes to stderr.
"""
import argparse
import ctypes
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402
import hgitaly_setup  # noqa: E402

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def reserve_port(host):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, 0))
    return s, s.getsockname()[1]


def prepare(addrs):
    """Return (urls for hgitaly, reservation sockets)."""
    urls, held = [], []
    for a in addrs:
        if a.startswith("unix:"):
            path = a[len("unix:"):]
            if path.startswith("//"):
                path = path[2:]
            if not path.startswith("/"):
                sys.exit("hgitaly_serve: unix path must be absolute: %r" % a)
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.unlink(path)
            except FileNotFoundError:
                pass
            urls.append("unix:" + path)
        elif a.startswith("tcp://"):
            host, _, port = a[len("tcp://"):].rpartition(":")
            if port == "0":
                s, p = reserve_port(host)
                held.append(s)
                port = str(p)
            urls.append("tcp://%s:%s" % (host, port))
        else:
            sys.exit("hgitaly_serve: --listen wants unix:/abs/path or tcp://host:port, got %r" % a)
    return urls, held


def _pdeathsig():
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def serving(url, timeout):
    try:
        with grpc.insecure_channel(peerlib.grpc_target(url)) as ch:
            rep = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                       timeout=timeout)
            return rep.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


def main():
    # Test runners may start us with SIGTERM/SIGINT blocked (children inherit the mask); unblock them so a
    # signal stops us and the processes we start.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="repositories root (made by hgitaly_setup.py)")
    ap.add_argument("--listen", action="append", required=True,
                    help="unix:/abs/path or tcp://127.0.0.1:PORT (0: any free port); repeatable")
    ap.add_argument("--hg", default=hgitaly_setup.default_hg())
    ap.add_argument("--setup", action="store_true", help="run hgitaly_setup.py --root DIR first")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    args = ap.parse_args()

    root = os.path.abspath(args.root)
    if args.setup:
        r = subprocess.run([sys.executable, os.path.join(peerlib.HERE, "hgitaly_setup.py"),
                            "--root", root, "--hg", args.hg], stdout=subprocess.DEVNULL)
        if r.returncode:
            sys.exit("hgitaly_serve: hgitaly_setup.py failed")
    hgrc = os.path.join(root, "hgrc")
    if not os.path.isfile(hgrc):
        sys.exit("hgitaly_serve: %s missing: run hgitaly_setup.py --root %s first" % (hgrc, root))

    urls, held = prepare(args.listen)
    cmd = [args.hg, "hgitaly-serve"]
    for u in urls:
        cmd += ["--listen", u]
    env = dict(os.environ, HGRCPATH=hgrc)
    t0 = time.monotonic()
    child = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                             preexec_fn=_pdeathsig)

    def forward(sig, _frame):
        if child.poll() is None:
            child.send_signal(sig)
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    deadline = t0 + args.ready_timeout
    pending = list(urls)
    while pending:
        if child.poll() is not None:
            sys.exit("hgitaly_serve: hg hgitaly-serve exited with %s before it was ready"
                     % child.returncode)
        if time.monotonic() > deadline:
            child.kill()
            sys.exit("hgitaly_serve: not ready after %.0f s on %s" % (args.ready_timeout, pending))
        if serving(pending[0], 1.0):
            pending.pop(0)
        else:
            time.sleep(0.05)
    for s in held:
        s.close()
    print("READY " + json.dumps({"listen": urls, "pid": os.getpid(), "server_pid": child.pid,
                                 "root": root,
                                 "startup_ms": int((time.monotonic() - t0) * 1000)}), flush=True)
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:
            continue
    for u in urls:
        if u.startswith("unix:"):
            try:
                os.unlink(u[len("unix:"):])
            except OSError:
                pass
    sys.exit(0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc)


if __name__ == "__main__":
    main()
