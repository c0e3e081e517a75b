#!/usr/bin/env bash
# Runs the whole comet-quotes benchmark suite, ours and Nchan in the same run: builds release,
# starts comet-quotes (127.0.0.1:8090), Nchan (8091, one worker) and the hello reference (8092), runs
# the wrk scripts, then the five long-poll workloads for both servers, and prints the side-by-side
# table. Every run is appended to bench/results/runs.jsonl under one group id.
#
# Usage: bench/run-all.sh
# Env:
#   GROUP=id          group id of this suite run (default: UTC timestamp)
#   QUICK=1           small numbers (smoke test, ~3 minutes) instead of the standard workloads
#   TARGETS="ours nchan"   which servers to run the latency workloads against
#   WORKLOADS="wrk w1 w2 w3 w4 w5"   which parts to run
#   RESULTS=path      results file (default bench/results/runs.jsonl)
#   SKIP_BUILD=1      use the binaries already built
#   CARGO_TARGET_DIR  honoured (binaries are taken from $CARGO_TARGET_DIR/release, default target/)
#   OURS_BIN=path     the comet-quotes binary to test (default: the one just built)
#   WORKER_COUNTS="1 2"   worker counts at which w1 and w4 run, for both servers (labels w1-1w, w4-2w, ...)
#   TRANSPORTS="poll sse"  transports of w1-w4 (SSE runs are labelled ...-sse); w5 is long-poll only
#   OURS_WORKERS=N    comet-quotes --workers for the other workloads (default: its own default)
#   NCHAN_WORKERS=N   nginx worker processes for the other workloads (default 1)
#   LATENCY_EXTRA="..."   more flags for every latency run, e.g. "--client-threads 4 --per-child 2500"
#                     for a load generator with cores of its own
set -euo pipefail
# Publishing needs a credential: every comet-quotes started here, the latency bench and wrk's
# pub.lua read this one.
export COMET_PUBLISH_TOKEN="${COMET_PUBLISH_TOKEN:-bench-publish-token}"

cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BENCH="$ROOT/bench"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
GROUP="${GROUP:-$(date -u +%Y%m%dT%H%M%SZ)}"
QUICK="${QUICK:-0}"
TARGETS="${TARGETS:-ours nchan}"
WORKLOADS="${WORKLOADS:-wrk w1 w2 w3 w4 w5}"
WORKER_COUNTS="${WORKER_COUNTS:-1 2}"
TRANSPORTS="${TRANSPORTS:-poll sse}"
OURS_WORKERS="${OURS_WORKERS:-}"
NCHAN_WORKERS="${NCHAN_WORKERS:-1}"
RESULTS="${RESULTS:-$BENCH/results/runs.jsonl}"
RUN_DIR="$(mktemp -d /tmp/comet-bench-run.XXXXXX)"
OURS_ADDR=127.0.0.1:8090
NCHAN_PORT=8091
HELLO_ADDR=127.0.0.1:8092
NCHAN_RUN_DIR="$RUN_DIR/nchan"
S=50
SYMBOLS="$(seq -s, -f 'S%g' 0 $((S - 1)))"

# Client and servers each need ~20,000 sockets at the top end.
ulimit -n "$(ulimit -Hn)"

# ---------------------------------------------------------------- prerequisites
# Debian packages: install them when missing (as root), so a fresh clone runs as the README says.
# Only what the chosen parts use: wrk and jq for the wrk part, nginx with nchan (and curl) for Nchan
# (a machine without a package registry can then run the rest with the binaries it was given).
missing=()
if [[ " $WORKLOADS " == *" wrk "* ]]; then
  for tool in wrk jq; do command -v "$tool" >/dev/null || missing+=("$tool"); done
fi
if [[ " $TARGETS " == *" nchan "* ]]; then
  for tool in nginx curl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ -f "${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}" ] || missing+=(nchan)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[run-all] missing: ${missing[*]}; installing wrk nginx-light libnginx-mod-nchan jq curl" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light libnginx-mod-nchan jq curl >/dev/null
  else
    echo "run as root, or: sudo apt-get install wrk nginx-light libnginx-mod-nchan jq curl" >&2
    exit 1
  fi
fi

if [ "$QUICK" = 1 ]; then
  WRK_SECS=3; W1="-c 100 -u 50 -d 5"; W2="-c 1000 -u 30 -d 5"; W3_C=2000; W4="-c 1000 --fanout-rounds 5"
  W5_C=1000; W5_D=5; W5_RATES="50 200"; W5_BISECT=0
else
  WRK_SECS=10; W1="-c 1000 -u 200 -d 20"; W2="-c 10000 -u 30 -d 20"; W3_C=19000; W4="-c 10000 --fanout-rounds 20"
  W5_C=10000; W5_D=10; W5_RATES="25 50 100 200 400 800 1600 3200"; W5_BISECT=2
fi

log() { echo "[run-all $(date +%H:%M:%S)] $*" >&2; }

OURS_PID=""; HELLO_PID=""
cleanup() {
  stop_ours || true
  stop_hello || true
  "$BENCH/nchan/stop.sh" "$NCHAN_RUN_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- build
OURS_BIN="${OURS_BIN:-$BIN/comet-quotes}"
WANT_OURS=0; [[ " $TARGETS " == *" ours "* ]] && WANT_OURS=1
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "building release"
  if [ "$WANT_OURS" = 1 ]; then
    cargo build --release -p comet-quotes -p comet-bench
  else
    cargo build --release -p comet-bench
  fi
fi
for b in latency hello; do
  [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build first)" >&2; exit 1; }
done
if [ "$WANT_OURS" = 1 ] && [ ! -x "$OURS_BIN" ]; then
  echo "missing $OURS_BIN (build first)" >&2; exit 1
fi

read -r LOAD1 _ < /proc/loadavg
log "group $GROUP, load average $LOAD1, results -> $RESULTS"
if awk -v l="$LOAD1" 'BEGIN { exit !(l > 0.5) }'; then
  log "WARNING: the machine is not idle (load $LOAD1); client and servers share $(nproc) cores, so figures will be noisy"
fi

# ---------------------------------------------------------------- servers
# Waits (bounded) until FILE contains a line matching PATTERN.
wait_line() {
  local file=$1 pattern=$2
  for _ in $(seq 1 100); do
    grep -q "$pattern" "$file" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# Stops a process we started: TERM, then KILL after 5 s.
stop_pid() {
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# The worker count of the next start: WORKERS when set (w1/w4 sweep), else OURS_WORKERS/NCHAN_WORKERS.
WORKERS=""
start_ours() {
  local w=${WORKERS:-$OURS_WORKERS}
  "$OURS_BIN" --listen "$OURS_ADDR" --no-feed --symbols "$SYMBOLS" ${w:+--workers "$w"} > "$RUN_DIR/ours.log" 2>&1 &
  OURS_PID=$!
  wait_line "$RUN_DIR/ours.log" "comet-quotes listening on" ||
    { echo "comet-quotes did not start; log:" >&2; cat "$RUN_DIR/ours.log" >&2; exit 1; }
}
stop_ours() { stop_pid "$OURS_PID"; OURS_PID=""; }

start_nchan() { NCHAN_WORKERS="${WORKERS:-$NCHAN_WORKERS}" "$BENCH/nchan/start.sh" "$NCHAN_PORT" "$NCHAN_RUN_DIR" >&2; }
stop_nchan() { "$BENCH/nchan/stop.sh" "$NCHAN_RUN_DIR" >&2; }

start_hello() {
  "$BIN/hello" --listen "$HELLO_ADDR" > "$RUN_DIR/hello.log" 2>&1 &
  HELLO_PID=$!
  wait_line "$RUN_DIR/hello.log" "hello listening on" || { echo "hello did not start" >&2; exit 1; }
}
stop_hello() { stop_pid "$HELLO_PID"; HELLO_PID=""; }

# A fresh server for every workload: a client that goes away leaves its poll parked until the poll
# times out (neither server reads a connection while its poll waits), and those leftovers would
# count against the next workload's memory, waiting-poll count and open-file limit.
fresh() {
  case "$1" in
    ours) stop_ours; start_ours; SERVER_PID=$OURS_PID; URL="http://$OURS_ADDR" ;;
    nchan) stop_nchan || true; start_nchan; SERVER_PID=$(cat "$NCHAN_RUN_DIR/worker.pid"); URL="http://127.0.0.1:$NCHAN_PORT" ;;
  esac
}

COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo none)"

# ---------------------------------------------------------------- wrk
# Runs wrk with a script and appends its wrk-json line to the results as a mode "wrk" record.
wrk_run() {
  local label=$1 target=$2 url=$3 script=$4; shift 4
  local out="$RUN_DIR/$label-$target.wrk"
  log "wrk $label against $target ($url)"
  timeout $((WRK_SECS + 30)) wrk -t2 -c100 -d"${WRK_SECS}s" --timeout 10s -s "$BENCH/wrk/$script" "$@" "$url" > "$out" 2>&1 || true
  local line
  line="$(sed -n 's/^wrk-json //p' "$out" | tail -n1)"
  if [ -z "$line" ]; then
    log "wrk $label/$target produced no result:"; cat "$out" >&2; return 0
  fi
  echo "$line" | jq -c --arg g "$GROUP" --arg l "$label" --arg t "$target" --arg c "$COMMIT" \
    --arg h "$(hostname)" --argjson n "$(nproc)" --argjson d "$WRK_SECS" \
    '{time_us: (now * 1e6 | floor), group: $g, label: $l, target: $t, mode: "wrk", commit: $c,
      machine: {host: $h, cpus: $n}, params: {threads: 2, conns: 100, duration: $d}, figures: {wrk: .}}' \
    >> "$RESULTS"
}

mkdir -p "$(dirname "$RESULTS")"
if [[ " $WORKLOADS " == *" wrk "* ]]; then
  export SYMBOLS_N=$S SYMBOL_PREFIX=S K=5
  if [[ " $TARGETS " == *" ours "* ]]; then
    fresh ours
    wrk_run wrk-snapshot ours "$URL" snapshot.lua
    wrk_run wrk-static ours "$URL" static.lua
    wrk_run wrk-pub ours "$URL" pub.lua
    # Long-polls need changes to return: a paced publisher (~200 changes/s) runs alongside.
    fresh ours
    PUB_DELAY_MS=5 timeout $((WRK_SECS + 30)) wrk -t1 -c1 -d"$((WRK_SECS + 2))s" -s "$BENCH/wrk/pub.lua" "$URL" > "$RUN_DIR/poll-publisher.wrk" 2>&1 &
    PUBLISHER=$!
    POLL_TIMEOUT=5 wrk_run wrk-poll ours "$URL" poll.lua
    wait "$PUBLISHER" || true
    stop_ours
  fi
  start_hello
  wrk_run wrk-static hello "http://$HELLO_ADDR" static.lua
  stop_hello
  if [[ " $TARGETS " == *" nchan "* ]]; then
    fresh nchan
    TARGET=nchan wrk_run wrk-pub nchan "$URL" pub.lua
    stop_nchan
  fi
fi

# ---------------------------------------------------------------- latency workloads
# latency with the common flags against a fresh server; a hard `timeout` backs up its own deadline.
# Output goes to the terminal and to $RUN_DIR/LABEL-TARGET.out. Must not run in a pipeline or
# subshell: `fresh` records the server's pid in this shell.
lat() {
  local target=$1 label=$2; shift 2
  fresh "$target"
  log "latency $label against $target: $*"
  local w=${WORKERS:-}
  [ -n "$w" ] || case "$target" in ours) w=$OURS_WORKERS ;; nchan) w=$NCHAN_WORKERS ;; esac
  timeout 900 "$BIN/latency" --target "$target" --url "$URL" --server-pid "$SERVER_PID" \
    --group "$GROUP" --label "$label" --results "$RESULTS" -s "$S" -k 5 ${w:+--server-workers "$w"} "$@" \
    ${LATENCY_EXTRA:-} 2>&1 |
    tee "$RUN_DIR/$label-$target.out" || log "latency $label against $target failed (see above)"
}
sustained() { grep -q '^verdict: sustained' "$RUN_DIR/$1-$2.out"; }
# The label suffix of a transport: none for the long-poll (the labels of earlier runs), -sse.
suffix() { [ "$1" = poll ] || echo "-$1"; }

# w1 and w4 at every worker count and transport, the two servers one after the other at each, so
# that paired runs are minutes apart at most (labels w1-1w, w4-2w-sse, ...).
for WORKERS in $WORKER_COUNTS; do
  for workload in w1 w4; do
    [[ " $WORKLOADS " == *" $workload "* ]] || continue
    for transport in $TRANSPORTS; do
      for target in $TARGETS; do
        label="$workload-${WORKERS}w$(suffix "$transport")"
        case "$workload" in
          w1) lat "$target" "$label" --transport "$transport" $W1 ;;
          w4) lat "$target" "$label" --transport "$transport" --fanout $W4 ;;
        esac
      done
    done
  done
done
WORKERS=""
stop_ours; stop_nchan >/dev/null 2>&1 || true

# w2 and w3 at the default worker counts, every transport, servers side by side.
for workload in w2 w3; do
  [[ " $WORKLOADS " == *" $workload "* ]] || continue
  for transport in $TRANSPORTS; do
    for target in $TARGETS; do
      label="$workload$(suffix "$transport")"
      case "$workload" in
        w2) lat "$target" "$label" --transport "$transport" $W2 ;;
        w3) lat "$target" "$label" --transport "$transport" --hold -c "$W3_C" ;;
      esac
    done
  done
done
stop_ours; stop_nchan >/dev/null 2>&1 || true

# w5 (long-poll): the highest change rate each server sustains.
for target in $TARGETS; do
  if [[ " $WORKLOADS " == *" w5 "* ]]; then
    # Highest U sustained at C=W5_C: double until a rate falls behind (at most the listed rates),
    # then bisect W5_BISECT times between the last good and the first bad rate.
    good=0; bad=0
    for u in $W5_RATES; do
      lat "$target" "w5-u$u" -c "$W5_C" -u "$u" -d "$W5_D"
      if sustained "w5-u$u" "$target"; then
        good=$u
      else
        bad=$u; break
      fi
    done
    for _ in $(seq 1 "$W5_BISECT"); do
      [ "$bad" -gt 0 ] && [ $((bad - good)) -gt 1 ] || break
      mid=$(((good + bad) / 2))
      lat "$target" "w5-u$mid" -c "$W5_C" -u "$mid" -d "$W5_D"
      if sustained "w5-u$mid" "$target"; then
        good=$mid
      else
        bad=$mid
      fi
    done
    if [ "$bad" -gt 0 ]; then first_bad="$bad/s"; else first_bad="none up to the last rate tried"; fi
    log "w5 $target: highest sustained U = $good/s (first behind: $first_bad)"
  fi
  case "$target" in ours) stop_ours ;; nchan) stop_nchan ;; esac
done

# ---------------------------------------------------------------- report
echo
"$BIN/latency" --report "$GROUP" --results "$RESULTS"
log "done; logs in $RUN_DIR"
