#!/usr/bin/env bash
# Stops the Nchan started by bench/nchan/start.sh (QUIT, then TERM, then KILL; every wait bounded).
# Usage: bench/nchan/stop.sh [RUN_DIR]   (default /tmp/comet-bench-nchan, env NCHAN_RUN_DIR)
set -euo pipefail
RUN_DIR="${1:-${NCHAN_RUN_DIR:-/tmp/comet-bench-nchan}}"
PIDFILE="$RUN_DIR/nginx.pid"
if [ ! -s "$PIDFILE" ]; then
  echo "no nchan pid file at $PIDFILE; nothing to stop"
  exit 0
fi
MASTER="$(cat "$PIDFILE")"
WORKER="$(cat "$RUN_DIR/worker.pid" 2>/dev/null || true)"

alive() { kill -0 "$1" 2>/dev/null; }
# Wait up to $1 tenths of a second for the master to exit.
wait_gone() { for _ in $(seq 1 "$1"); do alive "$MASTER" || return 0; sleep 0.1; done; ! alive "$MASTER"; }

if alive "$MASTER"; then
  # A graceful QUIT waits for held long-polls (up to the 60 s subscriber timeout), so after 3 s
  # fall back to TERM (fast shutdown), and after 3 s more to KILL.
  kill -QUIT "$MASTER" 2>/dev/null || true
  wait_gone 30 || { kill -TERM "$MASTER" 2>/dev/null || true; wait_gone 30; } ||
    { kill -KILL "$MASTER" 2>/dev/null || true; wait_gone 10; } || true
fi
# A KILLed master leaves its workers behind; only touch the pids we recorded for this run dir.
for w in ${WORKER//,/ }; do
  if alive "$w" && [ "$(cat "/proc/$w/comm" 2>/dev/null)" = nginx ]; then
    kill -KILL "$w" 2>/dev/null || true
  fi
done
if alive "$MASTER"; then
  echo "nchan master $MASTER still running" >&2
  exit 1
fi
rm -f "$PIDFILE" "$RUN_DIR/worker.pid"
echo "nchan stopped (master $MASTER)"
