#!/usr/bin/env bash
# Installs the real third-party peers that the integration tests spawn:
#   - Debian: nghttp2-proxy (nghttpx), nghttp2-client (nghttp, h2load), haproxy, socat
#   - Python venv <repo>/.peers/venv: grpcio, grpcio-tools, protobuf, hgitaly, opentelemetry-proto
#     (pinned in Tests/Peers/requirements.txt)
#   - Python code generated from Tests/Peers/proto/taptest.proto into <repo>/.peers/gen/
#   - Debian Go 1.19 + grpc-go 1.33 + hashicorp/yamux sources; the Go peers (Tests/Peers/go) built in GOPATH mode
#     into <repo>/.peers/bin/gitaly-peer (or $GO_PEERS_BIN/gitaly-peer)
# Idempotent and quiet: one line per step; the output of a failing step is shown.
# Environment: PEERS_PYTHON (default python3.11, else python3) picks the interpreter.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$REPO/.peers"
VENV="$PEERS/venv"
GEN="$PEERS/gen"
REQ="$REPO/Tests/Peers/requirements.txt"
PROTO_DIR="$REPO/Tests/Peers/proto"
LOG="$PEERS/install.log"
APT_PACKAGES=(git openssl nghttp2-proxy nghttp2-client haproxy socat golang-go golang-google-grpc-dev
    golang-github-hashicorp-yamux-dev golang-google-protobuf-dev)

mkdir -p "$PEERS"

fail() { echo "install-peers: FAILED: $*" >&2; exit 1; }

# run STEP-DESCRIPTION CMD...: run quietly (output in $LOG), show the log on failure.
run() {
    local what="$1"; shift
    if ! "$@" >"$LOG" 2>&1; then
        echo "install-peers: FAILED: $what; last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}

# 1. Debian packages, only the missing ones.
missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || fail "apt-get not found; install ${missing[*]} by hand"
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || fail "not root and no sudo; install ${missing[*]} by hand"
        SUDO=(sudo -n)
    fi
    run "apt-get update" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    run "apt-get install ${missing[*]}" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    echo "apt: installed ${missing[*]}"
else
    echo "apt: ${APT_PACKAGES[*]} already installed"
fi
for bin in git openssl nghttpx nghttp h2load haproxy socat go; do
    command -v "$bin" >/dev/null || fail "$bin not on PATH after installing Debian packages"
done

# 2. Python venv with pinned packages.
PY="${PEERS_PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3.11 >/dev/null && python3.11 -c 'pass' 2>/dev/null; then PY=python3.11; else PY=python3; fi
fi
pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || fail "cannot run $PY"
[ "$pyver" = "3.11" ] || fail "$PY is Python $pyver; hgitaly 18.8.3 needs Python 3.11 (set PEERS_PYTHON)"

stamp="$VENV/.requirements.stamp"
venv_python_ok() {
    [ -x "$VENV/bin/python" ] \
        && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = 3.11 ]
}
want() { cat "$REQ"; echo "python=$("$VENV/bin/python" -c 'import sys; print(sys.version)')"; }
if venv_python_ok && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(want)" ] \
    && "$VENV/bin/python" -c 'import grpc, grpc_tools, google.protobuf, hgitaly, opentelemetry.proto' 2>/dev/null; then
    echo "venv: $VENV up to date"
else
    rm -f "$stamp"
    if ! venv_python_ok; then
        rm -rf "$VENV"
        run "python venv ($PY -m venv $VENV)" "$PY" -m venv "$VENV"
        venv_python_ok || fail "$VENV/bin/python is not a working Python 3.11"
    fi
    run "pip install -r $REQ" "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        --no-input -r "$REQ"
    run "import check" "$VENV/bin/python" -c \
        'import grpc, grpc_tools, google.protobuf, hgitaly, opentelemetry.proto.trace.v1.trace_pb2'
    want >"$stamp"
    echo "venv: installed $(grep -cv '^\s*\(#\|$\)' "$REQ") pinned packages into $VENV"
fi
[ -x "$VENV/bin/hg" ] || fail "$VENV/bin/hg missing (mercurial not installed?)"

# 3. Generated code for the echo peers.
mkdir -p "$GEN"
run "protoc taptest.proto" "$VENV/bin/python" -m grpc_tools.protoc -I "$PROTO_DIR" \
    --python_out="$GEN" --grpc_python_out="$GEN" "$PROTO_DIR/taptest.proto"
[ -f "$GEN/taptest_pb2.py" ] && [ -f "$GEN/taptest_pb2_grpc.py" ] || fail "protoc produced no taptest_pb2*.py"
echo "gen: $GEN/taptest_pb2.py, taptest_pb2_grpc.py"

# 4. The Go peers (Gitaly-like upstream, Shell-like and Workhorse-like backchannel clients), offline, GOPATH mode.
GO_BIN_DIR="${GO_PEERS_BIN:-$PEERS/bin}"
GO_CACHE="${GO_PEERS_CACHE:-$PEERS/gocache}"
mkdir -p "$GO_BIN_DIR" "$GO_CACHE"
run "go build Tests/Peers/go" env -C "$REPO/Tests/Peers/go" GO111MODULE=off GOFLAGS= GOPATH=/usr/share/gocode \
    GOCACHE="$GO_CACHE" go build -o "$GO_BIN_DIR/gitaly-peer" .
[ -x "$GO_BIN_DIR/gitaly-peer" ] || fail "go build produced no $GO_BIN_DIR/gitaly-peer"
echo "go: $GO_BIN_DIR/gitaly-peer"
