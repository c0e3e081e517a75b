#!/usr/bin/env bash
# Soak run: W1 (C=1000, U=200/s) for DURATION seconds (default 600) against comet-quotes, plus
# connection churn all along (bench/src/bin/churn.rs: clients that connect and leave all the time,
# a third of them in the middle of a held poll or stream). Samples the server's RSS, open fds and
# threads at the start, every 30 s, and at the end once the clients are gone; they must come back
# flat. Appends one "soak" record to bench/results/runs.jsonl.
#
# REDIS=1: the server is a cluster node of a redis-server of its own (port REDIS_PORT, default
# 6393), and Redis fails twice inside the run: at a third of it, `kill -STOP` for 10 s (a Redis
# that stops answering without closing anything), at two thirds `kill -9`, restarted empty 5 s
# later. Publishes fail (503) while it is away; the node must come back, lose nothing it
# acknowledged, and stay flat.
#
# Usage: bench/soak.sh     Env: DURATION (s), GROUP, RESULTS, SKIP_BUILD=1, CHURN_THREADS (16),
#                          REDIS=1, REDIS_PORT
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

REDIS="${REDIS:-0}"
REDIS_PORT="${REDIS_PORT:-6393}"
REDIS_PID=""
NODE_ARGS=()
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no > "$RUN_DIR/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
}
if [ "$REDIS" = 1 ]; then
  command -v redis-server >/dev/null || { echo "REDIS=1 needs redis-server (apt-get install redis-server)" >&2; exit 1; }
  start_redis
  NODE_ARGS=(--redis "redis://127.0.0.1:$REDIS_PORT")
fi
"$BIN/comet-quotes" --listen "$ADDR" --no-feed --symbols "$(seq -s, -f 'S%g' 0 49)" "${NODE_ARGS[@]}" > "$RUN_DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; [ -z "$REDIS_PID" ] || kill -CONT "$REDIS_PID" 2>/dev/null; [ -z "$REDIS_PID" ] || kill "$REDIS_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do grep -q "listening on" "$RUN_DIR/server.log" && break; sleep 0.1; done

sample() { # label -> one JSON object
  local rss fds threads open up
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PID/status")
  threads=$(awk '/^Threads:/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  metrics=$(curl -s "http://$ADDR/metrics")
  open=$(echo "$metrics" | awk '/^comet_connections_open / {print $2}')
  up=$(echo "$metrics" | awk '/^comet_redis_up / {print $2}')
  echo "{\"at\":\"$1\",\"t\":$(date +%s),\"rss_kb\":$rss,\"fds\":$fds,\"threads\":$threads,\"connections_open\":${open:-null},\"redis_up\":${up:-null}}"
}

# REDIS=1: the two failures, at a third and at two thirds of the run (in the background).
redis_failures() {
  sleep $((DURATION / 3))
  echo "{\"event\":\"redis kill -STOP\",\"t\":$(date +%s)}" >> "$RUN_DIR/events.jsonl"
  kill -STOP "$REDIS_PID"; sleep 10; kill -CONT "$REDIS_PID"
  echo "{\"event\":\"redis kill -CONT\",\"t\":$(date +%s)}" >> "$RUN_DIR/events.jsonl"
  sleep $((DURATION / 3 - 10))
  echo "{\"event\":\"redis kill -9\",\"t\":$(date +%s)}" >> "$RUN_DIR/events.jsonl"
  kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; sleep 5
  start_redis
  echo "{\"event\":\"redis restarted empty\",\"t\":$(date +%s)}" >> "$RUN_DIR/events.jsonl"
  echo "$REDIS_PID" > "$RUN_DIR/redis.pid"
}
touch "$RUN_DIR/events.jsonl"

sleep 1
START=$(sample start); echo "$START" | tee "$RUN_DIR/samples.jsonl"
"$BIN/latency" --target ours --url "http://$ADDR" --server-pid "$PID" -c 1000 -u 200 -d "$DURATION" -s 50 -k 5 \
  --group "$GROUP" --label soak-w1 --results "$RESULTS" --deadline $((DURATION + 60)) > "$RUN_DIR/w1.out" 2>&1 &
W1=$!
"$BIN/churn" --url "http://$ADDR" --duration "$DURATION" --threads "${CHURN_THREADS:-16}" > "$RUN_DIR/churn.out" 2>&1 &
CHURN=$!
FAILURES=""
if [ "$REDIS" = 1 ]; then redis_failures & FAILURES=$!; fi
for i in $(seq 30 30 "$DURATION"); do
  sleep 30
  sample "${i}s" | tee -a "$RUN_DIR/samples.jsonl"
done
wait "$CHURN" || true
wait "$W1" || true
[ -z "$FAILURES" ] || wait "$FAILURES" || true
[ ! -f "$RUN_DIR/redis.pid" ] || REDIS_PID=$(cat "$RUN_DIR/redis.pid")
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
grep -E "lost  |latency from ts p(50|99) |server CPU per delivery|failed" "$RUN_DIR/w1.out" || true
[ "$REDIS" = 0 ] || cat "$RUN_DIR/events.jsonl"
jq -c -n --arg g "$GROUP" --arg c "$(git rev-parse --short HEAD)" --argjson d "$DURATION" \
  --argjson s0 "$START" --argjson s1 "$END" --argjson churn "${CHURN_JSON:-null}" \
  --slurpfile series "$RUN_DIR/samples.jsonl" --slurpfile events "$RUN_DIR/events.jsonl" \
  --argjson redis "$REDIS" \
  '{time_us: (now * 1e6 | floor), group: $g, label: (if $redis == 1 then "soak-redis" else "soak" end),
    target: "ours", mode: "soak", commit: $c,
    params: {duration_s: $d, w1: "-c 1000 -u 200", churn_threads: 16, redis: ($redis == 1)},
    figures: {"start": $s0, "end": $s1, series: $series, churn: $churn, events: $events}}' >> "$RESULTS"
echo "soak: start $START"
echo "soak: end   $END"
echo "logs in $RUN_DIR"
