#!/usr/bin/env bash
# The cluster benchmarks (issue "Grow past one process"), every run recorded in bench/results:
#   cw1-1node   W1 (C=1000, U=200/s, 20 s) against one node alone (no Redis)
#   cw1-1node-1w  the same with NODE_WORKERS workers, as every cluster node below has
#   cw1-1node-hop the same, each subscriber with 3 connections to the node, taking the next one at
#               every poll as the hopping run does: what hopping costs without a cluster
#   cw1-1node-redis
#               W1 against one node in a cluster of one (--redis, NODE_WORKERS workers): every publish
#               makes the round trip through Redis, nothing crosses nodes
#   cw1-3nodes-stay
#               W1 across 3 nodes sharing one Redis, each subscriber staying on its node
#   cw1-3nodes  W1 across 3 nodes sharing one Redis: subscribers spread over the nodes and hopping
#               to the next node at every poll, the publisher on node 1
#   cw1-3nodes-redis-restart
#               the same, with redis-server killed (kill -9) 8 s in and restarted empty 2 s later:
#               publishes in between get 503 and are not expected; every acknowledged one must
#               arrive (lost = 0)
#   nw1-stay / nw1-hop
#               W1 against one Nchan (1 worker), each subscriber with 3 connections to it, staying
#               on one or taking the next at every poll: the same client against another server
#   chold-5nodes / cfan-5nodes
#               HOLD_C (95,000) polls held across 5 nodes (19,000 each, under the open-file
#               limit), then one change fanned out to all of them (3 rounds)
# Redis's CPU per publish is taken over the cw1-3nodes run.
#
# The 3 nodes of the W1 runs get NODE_WORKERS (default 1) may workers each: three nodes, Redis and
# the load generator share the 2 cores of the development machine.
#
# The W1 runs go from one process to the full hopping cluster one step at a time, so that the
# difference between cw1-1node and cw1-3nodes can be split into its parts.
#
# Usage: bench/cluster-bench.sh
# Env: GROUP, RESULTS, SKIP_BUILD=1, HOLD_C, NODE_WORKERS, QUICK=1 (small),
#      PARTS="w1 restart hold nchan-hop" (which runs: the W1 steps, the Redis kill/restart run,
#      hold + fan-out, and the hopping client against Nchan)
set -euo pipefail
# Publishing needs a credential: every comet-quotes started here, the latency bench and wrk's
# pub.lua read this one.
export COMET_PUBLISH_TOKEN="${COMET_PUBLISH_TOKEN:-bench-publish-token}"
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
GROUP="${GROUP:-cluster-$(date -u +%Y%m%dT%H%M%SZ)}"
RESULTS="${RESULTS:-$ROOT/bench/results/runs.jsonl}"
RUN_DIR="$(mktemp -d /tmp/comet-cluster-bench.XXXXXX)"
REDIS_PORT=6390
BASE_PORT=8200
SYMBOLS="$(seq -s, -f 'S%g' 0 49)"
if [ "${QUICK:-0}" = 1 ]; then W1="-c 100 -u 50 -d 5"; HOLD_C="${HOLD_C:-2000}"; KILL_AT="${KILL_AT:-3}"; else W1="-c 1000 -u 200 -d 20"; HOLD_C="${HOLD_C:-95000}"; fi

PARTS="${PARTS:-w1 restart hold nchan-hop}"
part() { [[ " $PARTS " == *" $1 "* ]]; }

ulimit -n "$(ulimit -Hn)"
command -v redis-server >/dev/null || { echo "apt-get install redis-server" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p comet-quotes -p comet-bench
log() { echo "[cluster-bench $(date +%H:%M:%S)] $*" >&2; }

PIDS=()
# Stop everything started so far and wait (bounded) until it is gone: a node holding 19,000
# connections takes a moment to exit, and the next step binds the same ports.
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  PIDS=()
}
trap 'cleanup; "$ROOT/bench/nchan/stop.sh" "$RUN_DIR/nchan" >/dev/null 2>&1 || true' EXIT

wait_line() {
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}

REDIS_PID=""
start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$RUN_DIR" \
    > "$RUN_DIR/redis.log" 2>&1 &
  REDIS_PID=$!; PIDS+=("$REDIS_PID")
  wait_line "$RUN_DIR/redis.log" "Ready to accept connections"
}

# start_nodes N [extra args]: N nodes on BASE_PORT+1.. ; sets NODE_URLS and NODE_PIDS (comma lists)
start_nodes() {
  local n=$1; shift
  NODE_URLS=""; NODE_PIDS=""
  for i in $(seq 1 "$n"); do
    "$BIN/comet-quotes" --listen "127.0.0.1:$((BASE_PORT + i))" --no-feed --symbols "$SYMBOLS" "$@" \
      > "$RUN_DIR/node$i.log" 2>&1 &
    PIDS+=($!)
    NODE_URLS+="${NODE_URLS:+,}http://127.0.0.1:$((BASE_PORT + i))"
    NODE_PIDS+="${NODE_PIDS:+,}$!"
  done
  for i in $(seq 1 "$n"); do wait_line "$RUN_DIR/node$i.log" "comet-quotes listening on"; done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

lat() {
  local label=$1; shift
  log "latency $label: $*"
  timeout 900 "$BIN/latency" --target "${TARGET:-ours}" --group "$GROUP" --label "$label" --results "$RESULTS" \
    -s 50 -k 5 "$@" 2>&1 | tee "$RUN_DIR/$label.out"
}

if part w1; then
# -- W1, one node alone
start_nodes 1
lat cw1-1node --url "http://127.0.0.1:$((BASE_PORT + 1))" --server-pid "$NODE_PIDS" $W1
cleanup

# -- W1, one node alone with the workers of a cluster node
start_nodes 1 --workers "${NODE_WORKERS:-1}"
lat cw1-1node-1w --url "http://127.0.0.1:$((BASE_PORT + 1))" --server-pid "$NODE_PIDS" $W1
cleanup

# -- W1, one node alone, its subscribers hopping over 3 connections to it at every poll: the
#    client side of the hopping run below, without a cluster
ONE="http://127.0.0.1:$((BASE_PORT + 1))"
start_nodes 1 --workers "${NODE_WORKERS:-1}"
lat cw1-1node-hop --url "$ONE" --sub-urls "$ONE,$ONE,$ONE" --hop --server-pid "$NODE_PIDS" $W1
cleanup

# -- W1, one node in a cluster of one: the Redis round trip alone
start_redis
start_nodes 1 --redis "redis://127.0.0.1:$REDIS_PORT" --workers "${NODE_WORKERS:-1}"
lat cw1-1node-redis --url "http://127.0.0.1:$((BASE_PORT + 1))" --server-pid "$NODE_PIDS" $W1
cleanup

# -- W1 across 3 nodes, every subscriber staying on its node
start_redis
start_nodes 3 --redis "redis://127.0.0.1:$REDIS_PORT" --workers "${NODE_WORKERS:-1}"
lat cw1-3nodes-stay --url "http://127.0.0.1:$((BASE_PORT + 1))" --sub-urls "$NODE_URLS" --server-pid "$NODE_PIDS" $W1
cleanup

# -- W1 across 3 nodes, hopping
start_redis
start_nodes 3 --redis "redis://127.0.0.1:$REDIS_PORT" --workers "${NODE_WORKERS:-1}"
r0=$(cpu_ticks "$REDIS_PID")
lat cw1-3nodes --url "http://127.0.0.1:$((BASE_PORT + 1))" --sub-urls "$NODE_URLS" --hop --server-pid "$NODE_PIDS" $W1
r1=$(cpu_ticks "$REDIS_PID")
sent=$(sed -n 's/^  publishes sent \/ planned *\([0-9]*\) .*/\1/p' "$RUN_DIR/cw1-3nodes.out" | head -1)
hz=$(getconf CLK_TCK)
echo "redis CPU over cw1-3nodes: $(( (r1 - r0) * 1000 / hz )) ms for ${sent:-?} publishes" | tee "$RUN_DIR/redis-cpu.txt"
if [ -n "${sent:-}" ] && [ "$sent" -gt 0 ]; then
  awk -v t=$((r1 - r0)) -v hz="$hz" -v n="$sent" 'BEGIN { printf "redis CPU per publish: %.1f us\n", t / hz * 1e6 / n }' | tee -a "$RUN_DIR/redis-cpu.txt"
fi
cleanup

fi

if part restart; then
# -- W1 across 3 nodes with Redis killed and restarted empty mid-run
start_redis
start_nodes 3 --redis "redis://127.0.0.1:$REDIS_PORT" --workers "${NODE_WORKERS:-1}"
lat cw1-3nodes-redis-restart --url "http://127.0.0.1:$((BASE_PORT + 1))" --sub-urls "$NODE_URLS" --hop \
  --server-pid "$NODE_PIDS" $W1 &
LAT=$!
sleep "${KILL_AT:-8}"
log "kill -9 redis-server ($REDIS_PID)"
kill -KILL "$REDIS_PID"
sleep 2
log "restarting redis-server, empty"
start_redis
wait "$LAT" || true
cleanup

fi

if part hold; then
# -- HOLD_C held across 5 nodes, then one change fanned out to all
start_redis
start_nodes 5 --redis "redis://127.0.0.1:$REDIS_PORT"
lat chold-5nodes --url "http://127.0.0.1:$((BASE_PORT + 1))" --sub-urls "$NODE_URLS" --server-pid "$NODE_PIDS" \
  --hold -c "$HOLD_C" --deadline 300
cleanup
start_redis
start_nodes 5 --redis "redis://127.0.0.1:$REDIS_PORT"
lat cfan-5nodes --url "http://127.0.0.1:$((BASE_PORT + 1))" --sub-urls "$NODE_URLS" --server-pid "$NODE_PIDS" \
  --fanout --fanout-rounds 3 --fanout-gap 1 -c "$HOLD_C" --deadline 300
cleanup

fi

if part nchan-hop && ! { command -v nginx >/dev/null && [ -f "${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}" ]; }; then
  log "skipping nw1-stay/nw1-hop: apt-get install nginx-light libnginx-mod-nchan"
elif part nchan-hop; then
# -- The hopping client against Nchan: one server, 3 connections per subscriber
NCHAN_DIR="$RUN_DIR/nchan"
NCHAN_PORT=8191
N="http://127.0.0.1:$NCHAN_PORT"
for mode in stay hop; do
  "$ROOT/bench/nchan/start.sh" "$NCHAN_PORT" "$NCHAN_DIR" >&2
  hop=""; [ "$mode" = hop ] && hop="--hop"
  TARGET=nchan lat "nw1-$mode" --url "$N" --sub-urls "$N,$N,$N" $hop --server-pid "$(cat "$NCHAN_DIR/worker.pid")" $W1
  "$ROOT/bench/nchan/stop.sh" "$NCHAN_DIR" >/dev/null 2>&1 || true
done
fi

"$BIN/latency" --report "$GROUP" --results "$RESULTS" | tee "$RUN_DIR/report.txt"
cat "$RUN_DIR/redis-cpu.txt" 2>/dev/null || true
log "done; logs in $RUN_DIR"
