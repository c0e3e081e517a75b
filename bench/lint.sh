#!/usr/bin/env bash
# HTTP lint with REDbot (https://redbot.org, PyPI package `redbot`) against a fresh comet-quotes:
# `/`, `/api/quotes` and `/api/poll` (one that answers at once, one that times out). Writes the
# report to bench/results/redbot.txt and fails if REDbot finds a response without a Date header.
#
# Usage: bench/lint.sh        Env: REDBOT=path to the redbot command (default: a venv in /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release"
REDBOT="${REDBOT:-/tmp/comet-redbot-venv/bin/redbot}"
if [ ! -x "$REDBOT" ]; then
  python3 -m venv /tmp/comet-redbot-venv
  /tmp/comet-redbot-venv/bin/pip install -q redbot
fi
[ -x "$BIN/comet-quotes" ] || cargo build --release -p comet-quotes
ADDR=127.0.0.1:8097
"$BIN/comet-quotes" --listen "$ADDR" --no-feed --symbols IBM,MSFT > /dev/null 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fsS "http://$ADDR/api/symbols" >/dev/null 2>&1 && break; sleep 0.1; done
OUT=bench/results/redbot.txt
{
  echo "# REDbot $("$(dirname "$REDBOT")/pip" show redbot 2>/dev/null | sed -n 's/^Version: //p') against comet-quotes $(git rev-parse --short HEAD), $(date -u +%FT%TZ)"
  for path in "/" "/api/quotes?symbols=IBM,MSFT" "/api/poll?symbols=IBM&cursor=1" "/api/poll?symbols=IBM&timeout=0"; do
    echo; echo "## $path"
    timeout 60 "$REDBOT" -o text "http://$ADDR$path"
  done
} > "$OUT" 2>&1
cat "$OUT"
if grep -qi "date header" "$OUT" && grep -qiE "(no|missing) date" "$OUT"; then
  echo "REDbot: a response lacks Date" >&2; exit 1
fi
echo "REDbot: every response carries Date ($(grep -c '^Date: ' "$OUT") of $(grep -c '^HTTP/1.1 ' "$OUT"))"
