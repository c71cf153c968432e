#!/usr/bin/env python3
"""Gitaly-protocol client for HGitaly, built on HGitaly's own shipped stubs
(hgitaly.stub.*_pb2 / *_pb2_grpc: real gitaly.* package and service names).

Usage: .peers/venv/bin/python Tests/Peers/hgitaly_client.py --target unix:/abs/hgitaly.sock \
           [--calls NAME,NAME,...|all] [--repo proj.git] [--storage default] [--count N] \
           [--correlation-id ID] [--auth-hex HEX64] [--trace-id HEX32] [--timing] [--list]

Prints one JSON line per call (sorted keys, deterministic unless --timing):
  {"call", "method", "kind", "expected", "status", "details", "messages", "bytes",
   "sha256", "summary", "ok", "run"}
messages/bytes/sha256 cover the serialized response messages. Exit 0 when every call
ended with its expected status and passed its checks, 1 otherwise.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peerlib  # noqa: E402
import hgitaly_setup  # noqa: E402

import grpc  # noqa: E402
from hgitaly.stub import commit_pb2, commit_pb2_grpc  # noqa: E402
from hgitaly.stub import ref_pb2, ref_pb2_grpc  # noqa: E402
from hgitaly.stub import repository_pb2, repository_pb2_grpc  # noqa: E402
from hgitaly.stub import shared_pb2  # noqa: E402

MiB = 1024 * 1024
DEFAULT_REV = b"branch/default"


class Call:
    def __init__(self, name, service, method, kind, build, expected="OK", check=None,
                 summary=None):
        self.name, self.service, self.method, self.kind = name, service, method, kind
        self.build, self.expected = build, expected
        self.check = check or (lambda msgs, total: None)
        self.summary = summary or (lambda msgs: None)

    @property
    def path(self):
        return "/gitaly.%s/%s" % (self.service, self.method)


def _heads(msgs, attr="branches"):
    out = []
    for m in msgs:
        for b in getattr(m, attr):
            out.append(b.name.decode() if hasattr(b, "name") else b)
    return out


def _req(cond, what):
    return None if cond else what


def calls(a):
    repo = shared_pb2.Repository(storage_name=a.storage, relative_path=a.repo,
                                 gl_repository="project-1", gl_project_path="group/proj")
    missing = shared_pb2.Repository(storage_name=a.storage, relative_path="no/such/repo.git")
    R, F, C = repository_pb2, ref_pb2, commit_pb2
    lst = [
        Call("RepositoryExists", "RepositoryService", "RepositoryExists", "unary",
             lambda: R.RepositoryExistsRequest(repository=repo),
             check=lambda m, t: _req(m and m[0].exists, "exists is false"),
             summary=lambda m: {"exists": m[0].exists} if m else None),
        Call("FindDefaultBranchName", "RefService", "FindDefaultBranchName", "unary",
             lambda: F.FindDefaultBranchNameRequest(repository=repo),
             check=lambda m, t: _req(m and m[0].name == b"refs/heads/branch/default",
                                     "default branch is not refs/heads/branch/default"),
             summary=lambda m: {"name": m[0].name.decode()} if m else None),
        Call("FindAllBranches", "RefService", "FindAllBranches", "server_stream",
             lambda: F.FindAllBranchesRequest(repository=repo),
             check=lambda m, t: _req({"refs/heads/branch/default", "refs/heads/branch/stable"}
                                     <= set(_heads(m)), "branches missing"),
             summary=lambda m: {"branches": sorted(_heads(m))}),
        Call("GetArchive", "RepositoryService", "GetArchive", "server_stream",
             lambda: R.GetArchiveRequest(repository=repo, commit_id=a.archive_commit,
                                         prefix="proj/", format=R.GetArchiveRequest.TAR),
             check=lambda m, t: _req(sum(len(x.data) for x in m) >= 16 * MiB,
                                     "archive smaller than 16 MiB"),
             summary=lambda m: {"archive_bytes": sum(len(x.data) for x in m)}),
        Call("RepositorySize", "RepositoryService", "RepositorySize", "unary",
             lambda: R.RepositorySizeRequest(repository=repo),
             check=lambda m, t: _req(m and m[0].size >= 16 * 1024, "size < 16 MiB"),
             summary=lambda m: {"size_kib_at_least_16MiB": bool(m and m[0].size >= 16 * 1024)}),
        Call("FindCommits", "CommitService", "FindCommits", "server_stream",
             lambda: C.FindCommitsRequest(repository=repo, revision=DEFAULT_REV, limit=100),
             check=lambda m, t: _req(sum(len(x.commits) for x in m) >= 5, "fewer than 5 commits"),
             summary=lambda m: {"commits": sum(len(x.commits) for x in m)}),
        Call("ListFiles", "CommitService", "ListFiles", "server_stream",
             lambda: C.ListFilesRequest(repository=repo, revision=DEFAULT_REV),
             check=lambda m, t: _req(b"big.bin" in [p for x in m for p in x.paths],
                                     "big.bin not listed"),
             summary=lambda m: {"paths": sorted(p.decode() for x in m for p in x.paths)}),
        Call("CountCommits", "CommitService", "CountCommits", "unary",
             lambda: C.CountCommitsRequest(repository=repo, revision=DEFAULT_REV),
             check=lambda m, t: _req(m and m[0].count >= 5, "count < 5"),
             summary=lambda m: {"count": m[0].count} if m else None),
        Call("FindLocalBranches", "RefService", "FindLocalBranches", "server_stream",
             lambda: F.FindLocalBranchesRequest(repository=repo),
             check=lambda m, t: _req(len(_heads(m, "local_branches")) >= 2, "fewer than 2 branches"),
             summary=lambda m: {"branches": sorted(_heads(m, "local_branches"))}),
        Call("FindAllTags", "RefService", "FindAllTags", "server_stream",
             lambda: F.FindAllTagsRequest(repository=repo),
             check=lambda m, t: _req("v1.0" in _heads(m, "tags"), "tag v1.0 missing"),
             summary=lambda m: {"tags": sorted(_heads(m, "tags"))}),
        Call("RefExists", "RefService", "RefExists", "unary",
             lambda: F.RefExistsRequest(repository=repo, ref=b"refs/heads/branch/stable"),
             check=lambda m, t: _req(m and m[0].value, "refs/heads/branch/stable missing"),
             summary=lambda m: {"value": m[0].value} if m else None),
        Call("FindBranch", "RefService", "FindBranch", "unary",
             lambda: F.FindBranchRequest(repository=repo, name=b"branch/stable"),
             check=lambda m, t: _req(m and m[0].branch.name, "branch/stable not found"),
             summary=lambda m: {"name": m[0].branch.name.decode()} if m else None),
        # Error-returning calls: the expected status is the point.
        Call("MissingRepoDefaultBranch", "RefService", "FindDefaultBranchName", "unary",
             lambda: F.FindDefaultBranchNameRequest(repository=missing), expected="NOT_FOUND"),
        Call("MissingRepoSize", "RepositoryService", "RepositorySize", "unary",
             lambda: R.RepositorySizeRequest(repository=missing), expected="NOT_FOUND"),
        Call("HasLocalBranches", "RepositoryService", "HasLocalBranches", "unary",
             lambda: R.HasLocalBranchesRequest(repository=repo), expected="UNIMPLEMENTED"),
    ]
    return {c.name: c for c in lst}


STUBS = {
    "RepositoryService": repository_pb2_grpc.RepositoryServiceStub,
    "RefService": ref_pb2_grpc.RefServiceStub,
    "CommitService": commit_pb2_grpc.CommitServiceStub,
}

DEFAULT_CALLS = ["RepositoryExists", "FindDefaultBranchName", "FindAllBranches", "GetArchive"]


def run_call(channel, c, md, timeout):
    stub = STUBS[c.service](channel)
    fn = getattr(stub, c.method)
    digest = peerlib.Digest()
    msgs = []
    req = c.build()
    try:
        if c.kind == "unary":
            rep, call = fn.with_call(req, metadata=md, timeout=timeout)
            msgs.append(rep)
        else:
            call = fn(req, metadata=md, timeout=timeout)
            for rep in call:
                msgs.append(rep)
        code, details = call.code(), call.details() or ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    for m in msgs:
        digest.add(m.SerializeToString())
    status = peerlib.status_name(code)
    failed = []
    if status != c.expected:
        failed.append("status %s != expected %s" % (status, c.expected))
    elif status == "OK":
        why = c.check(msgs, digest.nbytes)
        if why:
            failed.append(why)
    return {
        "call": c.name,
        "method": c.path,
        "kind": c.kind,
        "expected": c.expected,
        "status": status,
        "details": details,
        "messages": digest.count,
        "bytes": digest.nbytes,
        "sha256": digest.hexdigest(),
        "summary": c.summary(msgs) if status == "OK" else None,
        "ok": not failed,
        "failed": failed,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    peerlib.add_client_args(ap, target_required=False)
    ap.add_argument("--calls", default=",".join(DEFAULT_CALLS),
                    help="comma-separated call names, or 'all' (default: %(default)s)")
    ap.add_argument("--repo", default="proj.git", help="Gitaly relative_path")
    ap.add_argument("--storage", default="default")
    ap.add_argument("--archive-commit", default=hgitaly_setup.DEFAULT_HEAD,
                    help="GetArchive commit_id: a full hex node id (HGitaly 18.8.3 fails on "
                         "symbolic names there); default: the default head made by "
                         "hgitaly_setup.py (%(default)s)")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=60.0, help="per-call deadline (s)")
    ap.add_argument("--list", action="store_true", help="list call names and exit")
    args = ap.parse_args()

    table = calls(args)
    if args.list:
        for c in table.values():
            print("%-26s %-44s %-13s %s" % (c.name, c.path, c.kind, c.expected))
        return
    if not args.target:
        ap.error("--target is required")
    names = list(table) if args.calls == "all" else [n.strip() for n in args.calls.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown:
        sys.exit("hgitaly_client: unknown calls %s; known: %s" % (unknown, ", ".join(table)))

    md = peerlib.client_metadata(args)
    all_ok = True
    with grpc.insecure_channel(peerlib.grpc_target(args.target),
                               options=peerlib.channel_options(args)) as ch:
        for run in range(args.count):
            for n in names:
                t0 = time.perf_counter()
                out = run_call(ch, table[n], md, args.timeout)
                out["run"] = run
                if args.timing:
                    out["elapsed_ms"] = round((time.perf_counter() - t0) * 1000, 3)
                all_ok &= out["ok"]
                print(json.dumps(out, sort_keys=True, separators=(",", ":")), flush=True)
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
