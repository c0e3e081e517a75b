#!/usr/bin/env bash
# What subscriber tokens cost: W1 (C=1,000 long-poll subscribers, U=200 changes/s, D=20 s, K=5 of
# S=50 symbols) against one comet-quotes worker without tokens, with HS256 tokens and with RS256
# tokens, every subscriber presenting its own token (granting exactly its symbols) at every poll.
# Runs the three side by side, ROUNDS times in turn (none, hs256, rs256, none, ...), each against
# a fresh server, appends every run to bench/results/runs.jsonl (labels w1-auth-none, -hs256,
# -rs256) and prints server CPU per delivery and latency per mode, and each mode's ratio to none.
#
# Usage: bench/auth-cost.sh
# Env: GROUP (default auth-<UTC time>), ROUNDS (2), MODES ("none hs256 rs256"), TRANSPORT (poll|sse),
#      SKIP_BUILD=1, RESULTS=path, W1 (the latency flags, default "-c 1000 -u 200 -d 20")
set -euo pipefail
export COMET_PUBLISH_TOKEN="${COMET_PUBLISH_TOKEN:-bench-publish-token}"
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
GROUP="${GROUP:-auth-$(date -u +%Y%m%dT%H%M%SZ)}"
ROUNDS="${ROUNDS:-2}"
MODES="${MODES:-none hs256 rs256}"
TRANSPORT="${TRANSPORT:-poll}"
RESULTS="${RESULTS:-$ROOT/bench/results/runs.jsonl}"
W1="${W1:--c 1000 -u 200 -d 20}"
RUN_DIR="$(mktemp -d /tmp/comet-auth-cost.XXXXXX)"
ADDR=127.0.0.1:8090
SECRET="bench-secret-bench-secret-bench-secret"
SYMBOLS="$(seq -s, -f 'S%g' 0 49)"
ulimit -n "$(ulimit -Hn)"
command -v jq >/dev/null || { echo "needs jq (apt-get install jq)" >&2; exit 1; }
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release -p comet-quotes -p comet-bench
log() { echo "[auth-cost $(date +%H:%M:%S)] $*" >&2; }

# A fresh RSA key pair for this run (the server gets the public half).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$RUN_DIR/rsa.pem" 2>/dev/null
openssl pkey -in "$RUN_DIR/rsa.pem" -pubout -out "$RUN_DIR/rsa_public.pem"

PID=""
stop() {
  [ -n "$PID" ] || return 0
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  PID=""
}
trap stop EXIT

run() {
  local mode=$1 round=$2 server_args=() bench_args=()
  case "$mode" in
    none) ;;
    hs256) server_args=(--jwt-secret "$SECRET"); bench_args=(--jwt-secret "$SECRET") ;;
    rs256) server_args=(--jwt-public-key "$RUN_DIR/rsa_public.pem"); bench_args=(--jwt-private-key "$RUN_DIR/rsa.pem") ;;
    *) echo "unknown mode $mode" >&2; exit 1 ;;
  esac
  "$BIN/comet-quotes" --listen "$ADDR" --no-feed --workers 1 --symbols "$SYMBOLS" "${server_args[@]}" \
    > "$RUN_DIR/server-$mode-$round.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 100); do grep -q "listening on" "$RUN_DIR/server-$mode-$round.log" 2>/dev/null && break; sleep 0.1; done
  log "round $round: $mode"
  # shellcheck disable=SC2086
  timeout 300 "$BIN/latency" --target ours --url "http://$ADDR" --server-pid "$PID" --server-workers 1 \
    --transport "$TRANSPORT" -s 50 -k 5 $W1 --group "$GROUP" --label "w1-auth-$mode" --results "$RESULTS" \
    "${bench_args[@]}" > "$RUN_DIR/latency-$mode-$round.out" 2>&1 ||
    { log "latency failed:"; tail -20 "$RUN_DIR/latency-$mode-$round.out" >&2; }
  stop
}

for round in $(seq 1 "$ROUNDS"); do
  for mode in $MODES; do run "$mode" "$round"; done
done

echo
echo "group $GROUP ($TRANSPORT, one worker): server CPU per delivery, latency from the change, lost"
jq -r --arg g "$GROUP" 'select(.group == $g) |
  [.label, .figures.server.cpu_us_per_delivery, .figures.latency_ts_ms.p50, .figures.latency_ts_ms.p99,
   .figures.deliveries.lost, .figures.deliveries.received] | @tsv' "$RESULTS" |
  awk -F'\t' '
    { cpu[$1] += $2; n[$1]++; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; lost[$1] += $5; got[$1] += $6 }
    END {
      base = cpu["w1-auth-none"] / n["w1-auth-none"]
      printf "%-16s %12s %8s %18s %18s %10s\n", "label", "cpu us/deliv", "ratio", "p50 ms", "p99 ms", "lost"
      for (l in cpu) {
        c = cpu[l] / n[l]
        printf "%-16s %12.2f %8.3f %18s %18s %10d\n", l, c, c / base, p50[l], p99[l], lost[l]
      }
    }'
log "logs in $RUN_DIR"
