# Sourced by the bench scripts, from the repository root. Builds kvd and kvcli in release mode
# and sets KVD, KVCLI and WORK (a new temporary directory). At exit it stops the process in
# PID (with signal STOP_SIGNAL, TERM unless set) and
# every process in PIDS, runs the script's `on_exit` function if it defines one, and removes
# WORK. Also:
#   free_port                 # prints a TCP port of 127.0.0.1 that is free now
#   wait_health ADDR [TRIES]  # waits for http://ADDR/health, 0.1 s apart (100 tries), or fails
cargo build --release -q -p kvd -p kvcli
KVD=$PWD/target/release/kvd
KVCLI=$PWD/target/release/kvcli
WORK=$(mktemp -d)
PID=
PIDS=()

bench_cleanup() {
  [ -n "$PID" ] && kill -"${STOP_SIGNAL:-TERM}" "$PID" 2>/dev/null
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if declare -F on_exit >/dev/null; then on_exit || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap bench_cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_health() {
  local _
  for _ in $(seq "${2:-100}"); do
    curl -sf "http://$1/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "no answer from http://$1/health" >&2
  return 1
}
