#!/usr/bin/env bash
# Installs the test peers, builds everything and runs every test. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-peers.sh
swift build --build-tests
swift test --skip-build "$@"
