#!/usr/bin/env bash
# Runs the gitaly-tap benchmark: installs the peers it needs (nghttpx, h2load, HAProxy via
# scripts/install-peers.sh), builds the tap and the benchmark in release mode, runs every workload over every path
# interleaved in one run, prints the tables and stores them in BENCHMARKS.md (section named by --label).
#
#   Benchmarks/run.sh [--label NAME] [--quick] [--calls N] [--stream-mib N] [--window S] [--rounds N]
#                     [--only tap,nghttpx,haproxy,tap+record] [--transports unix,tcp]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

if [ -z "${BENCH_SKIP_INSTALL:-}" ]; then
    scripts/install-peers.sh
fi
for bin in nghttpx haproxy; do
    command -v "$bin" >/dev/null || { echo "run.sh: $bin missing (scripts/install-peers.sh installs it)" >&2; exit 1; }
done

echo "build: gitaly-tap (release)"
swift build -c release --product gitaly-tap 2>&1 | grep -E "error|Build of product|Build complete" || true
[ -x .build/release/gitaly-tap ] || { echo "run.sh: release build of gitaly-tap failed" >&2; exit 1; }
echo "build: tapbench (release)"
(cd Benchmarks && swift build -c release 2>&1 | grep -E "error|Build complete" || true)
BIN="$(cd Benchmarks && swift build -c release --show-bin-path)/tapbench"
[ -x "$BIN" ] || { echo "run.sh: release build of tapbench failed" >&2; exit 1; }

ulimit -n 20000 2>/dev/null || true
echo "load: $(uptime)"
export BENCH_COMMAND="Benchmarks/run.sh $*"
exec "$BIN" run --tap "$REPO/.build/release/gitaly-tap" --markdown "$REPO/BENCHMARKS.md" "$@"
