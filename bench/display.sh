#!/usr/bin/env bash
# The change-to-display delay in real browsers: a fresh comet-quotes (no feed), PAGES headless
# Chromium pages on its quotes page (each its own browser; the page reports its display delays by
# default), one change a second to their symbol for DURATION seconds; prints the display and the
# arrival delay p50 / p99 from the server's histograms and appends a "display" record to
# bench/results/runs.jsonl.
#
# Usage: bench/display.sh     Env: PAGES (20), DURATION (30), GROUP, RESULTS, SKIP_BUILD=1
# Needs: apt-get install chromium chromium-driver
set -euo pipefail
export COMET_PUBLISH_TOKEN="${COMET_PUBLISH_TOKEN:-bench-publish-token}"
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
PAGES="${PAGES:-20}"
DURATION="${DURATION:-30}"
GROUP="${GROUP:-display-$(date -u +%Y%m%dT%H%M%SZ)}"
RESULTS="${RESULTS:-$ROOT/bench/results/runs.jsonl}"
RUN_DIR="$(mktemp -d /tmp/comet-display.XXXXXX)"
ADDR=127.0.0.1:8090
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p comet-quotes -p comet-bench
"$BIN/comet-quotes" --listen "$ADDR" --no-feed --symbols IBM,MSFT > "$RUN_DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$RUN_DIR/server.log" && break; sleep 0.1; done
"$BIN/display" --url "http://$ADDR" --pages "$PAGES" --duration "$DURATION" --symbol IBM \
  --group "$GROUP" --results "$RESULTS"
echo "logs in $RUN_DIR"
