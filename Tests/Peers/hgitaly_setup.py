#!/usr/bin/env python3
"""Create a repositories root for HGitaly (a real Gitaly-protocol server for Mercurial).

Usage: .peers/venv/bin/python Tests/Peers/hgitaly_setup.py --root DIR [--hg HG] [--force]

Creates (idempotently; --force rebuilds):
  DIR/proj.hg        Mercurial repo, Gitaly relative_path "proj.git", storage "default":
                     commits on branch default, a named branch "stable", a tag "v1.0",
                     big.bin = 17 MiB of seeded random bytes (GetArchive >= 16 MiB),
                     .hg/default_gitlab_branch = branch/default
  DIR/hgrc           HGRCPATH for hgitaly-serve ([extensions] hgitaly =,
                     [heptapod] repositories-root = DIR, fast shutdown)
Commit dates and authors are fixed, so node ids and archives are the same on every machine.
Prints one JSON line: {"root", "hgrc", "storage", "relative_path", "heads": {...}, ...}.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MiB = 1024 * 1024
BIG_SIZE = 17 * MiB
SETUP_VERSION = "1"
USER = "Tap Tester <tap@example.com>"
# Node ids are fixed by content, authors and dates: checked after every setup, used by
# hgitaly_client.py (GetArchive needs a hex commit id).
DEFAULT_HEAD = "c6138f95111c28b9e208d27f700e2db41675579f"
STABLE_HEAD = "abea0787267f69b325e63baf9495b2703aa636bd"


def default_hg():
    cand = os.path.join(os.path.dirname(sys.executable), "hg")
    if os.access(cand, os.X_OK):
        return cand
    return os.path.join(REPO, ".peers", "venv", "bin", "hg")


def hgrc_text(root):
    return (
        "# written by Tests/Peers/hgitaly_setup.py\n"
        "[extensions]\n"
        "hgitaly =\n"
        "\n"
        "[heptapod]\n"
        "repositories-root = %s\n"
        "\n"
        "[hgitaly]\n"
        "# SIGTERM stops the server at once (default: 300 s grace for running calls)\n"
        "worker.graceful-shutdown-timeout-seconds = 0\n"
        "\n"
        "[ui]\n"
        "username = %s\n"
        "\n"
        "[phases]\n"
        "publish = True\n" % (root, USER)
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", required=True, help="repositories root to create")
    ap.add_argument("--hg", default=default_hg(), help="hg executable (default: the venv's)")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args()

    root = os.path.abspath(args.root)
    repo = os.path.join(root, "proj.hg")
    hgrc = os.path.join(root, "hgrc")
    stamp = os.path.join(repo, ".hg", "tap-setup-version")
    os.makedirs(root, exist_ok=True)
    with open(hgrc, "w") as f:
        f.write(hgrc_text(root))

    env = dict(os.environ, HGRCPATH=hgrc, HGPLAIN="1", HGENCODING="utf-8", TZ="UTC",
               LC_ALL="C.UTF-8")

    def hg(*a):
        r = subprocess.run([args.hg, "--cwd", repo] + list(a), env=env, check=False,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            sys.exit("hgitaly_setup: hg %s failed (%d): %s%s" % (" ".join(a), r.returncode,
                                                                  r.stdout, r.stderr))
        return r.stdout.strip()

    def write(rel, data):
        p = os.path.join(repo, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())

    def commit(msg, day):
        hg("commit", "-A", "-m", msg, "-u", USER, "-d", "2024-01-%02d 12:00:00 +0000" % day)

    fresh = args.force or not (os.path.isfile(stamp) and open(stamp).read() == SETUP_VERSION)
    if fresh:
        shutil.rmtree(repo, ignore_errors=True)
        r = subprocess.run([args.hg, "init", repo], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode:
            sys.exit("hgitaly_setup: hg init failed: " + r.stdout)
        write("README.md", "# proj\n\nA test repository served by HGitaly for gitaly-tap.\n")
        commit("Initial commit", 1)
        write("src/hello.py", "print('hello from gitaly-tap')\n")
        write("src/util.py", "def add(a, b):\n    return a + b\n")
        commit("Add sources", 2)
        write("docs/guide.txt", "".join("line %d of the guide\n" % i for i in range(200)))
        commit("Add guide", 3)
        hg("tag", "-u", USER, "-d", "2024-01-04 12:00:00 +0000", "-m", "Tag v1.0", "v1.0")
        hg("branch", "stable")
        write("STABLE", "stable branch\n")
        commit("Start stable branch", 5)
        write("src/util.py", "def add(a, b):\n    return a + b  # stable fix\n")
        commit("Fix on stable", 6)
        hg("update", "-q", "default")
        write("big.bin", random.Random(20240107).randbytes(BIG_SIZE))
        commit("Add big incompressible file", 7)
        write("src/hello.py", "print('hello again from gitaly-tap')\n")
        commit("Update hello", 8)
        write(os.path.join(".hg", "default_gitlab_branch"), "branch/default")
        hg("update", "-q", "null")  # server-side repos have no working copy
        hg("debugupdatecaches")  # so serving does not grow .hg (RepositorySize stays put)
        with open(stamp, "w") as f:
            f.write(SETUP_VERSION)

    heads = {}
    for line in hg("heads", "-T", "{branch} {node}\\n").splitlines():
        b, node = line.split()
        heads[b] = node
    if heads != {"default": DEFAULT_HEAD, "stable": STABLE_HEAD}:
        sys.exit("hgitaly_setup: unexpected heads %s (expected default=%s stable=%s): "
                 "update DEFAULT_HEAD/STABLE_HEAD if the repo content changed on purpose"
                 % (heads, DEFAULT_HEAD, STABLE_HEAD))
    out = {
        "root": root,
        "hgrc": hgrc,
        "storage": "default",
        "relative_path": "proj.git",
        "repo_dir": repo,
        "default_branch": "branch/default",
        "heads": heads,
        "tip": hg("log", "-r", "tip", "-T", "{node}"),
        "commits": hg("log", "-T", "x").count("x"),
        "big_file": "big.bin",
        "big_file_bytes": BIG_SIZE,
        "created": fresh,
    }
    print(json.dumps(out, sort_keys=True), flush=True)


if __name__ == "__main__":
    main()
