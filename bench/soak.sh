#!/usr/bin/env bash
# Soak run: W1 (C=1000, U=200/s) for DURATION seconds (default 600) against comet-quotes, plus
# connection churn all along (bench/src/bin/churn.rs: clients that connect and leave all the time,
# a third of them in the middle of a held poll or stream). Samples the server's RSS, open fds and
# threads at the start, every 30 s, and at the end once the clients are gone; they must come back
# flat. Appends one "soak" record to bench/results/runs.jsonl.
#
# Usage: bench/soak.sh     Env: DURATION (s), GROUP, RESULTS, SKIP_BUILD=1, CHURN_THREADS (16)
set -euo pipefail
# Publishing needs a credential: every comet-quotes started here, the latency bench and wrk's
# pub.lua read this one.
export COMET_PUBLISH_TOKEN="${COMET_PUBLISH_TOKEN:-bench-publish-token}"
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION="${DURATION:-600}"
GROUP="${GROUP:-soak-$(date -u +%Y%m%dT%H%M%SZ)}"
RESULTS="${RESULTS:-$ROOT/bench/results/runs.jsonl}"
RUN_DIR="$(mktemp -d /tmp/comet-soak.XXXXXX)"
ADDR=127.0.0.1:8090
ulimit -n "$(ulimit -Hn)"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p comet-quotes -p comet-bench

"$BIN/comet-quotes" --listen "$ADDR" --no-feed --symbols "$(seq -s, -f 'S%g' 0 49)" > "$RUN_DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$RUN_DIR/server.log" && break; sleep 0.1; done

sample() { # label -> one JSON object
  local rss fds threads open
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  open=$(curl -s "http://$ADDR/metrics" | awk '/^comet_connections_open / {print $2}')
  echo "{\"at\":\"$1\",\"t\":$(date +%s),\"rss_kb\":$rss,\"fds\":$fds,\"threads\":$threads,\"connections_open\":${open:-null}}"
}

sleep 1
START=$(sample start); echo "$START" | tee "$RUN_DIR/samples.jsonl"
"$BIN/latency" --target ours --url "http://$ADDR" --server-pid "$PID" -c 1000 -u 200 -d "$DURATION" -s 50 -k 5 \
  --group "$GROUP" --label soak-w1 --results "$RESULTS" --deadline $((DURATION + 60)) > "$RUN_DIR/w1.out" 2>&1 &
W1=$!
"$BIN/churn" --url "http://$ADDR" --duration "$DURATION" --threads "${CHURN_THREADS:-16}" > "$RUN_DIR/churn.out" 2>&1 &
CHURN=$!
for i in $(seq 30 30 "$DURATION"); do
  sleep 30
  sample "${i}s" | tee -a "$RUN_DIR/samples.jsonl"
done
wait "$CHURN" || true
wait "$W1" || true
# The clients are gone: wait (bounded) for the server's connections to close.
for _ in $(seq 1 200); do
  open=$(curl -s "http://$ADDR/metrics" | awk '/^comet_connections_open / {print $2}')
  [ "${open:-99}" -le 1 ] && break
  sleep 0.5
done
sleep 1
END=$(sample end); echo "$END" | tee -a "$RUN_DIR/samples.jsonl"
CHURN_JSON=$(sed -n 's/^churn-json //p' "$RUN_DIR/churn.out")
echo "churn: $CHURN_JSON"
grep -E "lost  |latency from ts p(50|99) |server CPU per delivery" "$RUN_DIR/w1.out" || true
jq -c -n --arg g "$GROUP" --arg c "$(git rev-parse --short HEAD)" --argjson d "$DURATION" \
  --argjson s0 "$START" --argjson s1 "$END" --argjson churn "${CHURN_JSON:-null}" \
  --slurpfile series "$RUN_DIR/samples.jsonl" \
  '{time_us: (now * 1e6 | floor), group: $g, label: "soak", target: "ours", mode: "soak", commit: $c,
    params: {duration_s: $d, w1: "-c 1000 -u 200", churn_threads: 16},
    figures: {"start": $s0, "end": $s1, series: $series, churn: $churn}}' >> "$RESULTS"
echo "soak: start $START"
echo "soak: end   $END"
echo "logs in $RUN_DIR"
