#!/usr/bin/env bash
# Runs every benchmark script of kvd/bench with tiny settings, so they keep working: each must
# exit 0 and print its summary line. The figures of such short runs mean nothing; README gives
# the real runs. Part of tests/run-all.sh, which installs what these need (redis-server and
# redis-tools, rocksdb-tools for db_bench, valgrind).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -q -p kvd -p kvcli
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

# check NAME PATTERN CMD...: runs CMD, fails with its output unless it exits 0 and prints a
# line matching PATTERN.
check() {
  local name=$1 pattern=$2
  shift 2
  local start=$SECONDS
  if ! "$@" >"$LOG" 2>&1; then
    echo "bench smoke: $name failed:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  if ! grep -Eq "$pattern" "$LOG"; then
    echo "bench smoke: $name printed no line matching /$pattern/:" >&2
    cat "$LOG" >&2
    exit 1
  fi
  echo "bench smoke: $name ok ($((SECONDS - start)) s)"
}

check vs-redis '^  write +[0-9]+' env OPS=2000 RECORDS=1000 kvd/bench/vs-redis.sh
check "vs-redis THREADS=1" '^  write +[0-9]+' env THREADS=1 OPS=2000 RECORDS=1000 kvd/bench/vs-redis.sh
check "vs-redis --sync always" '^  write +[0-9]+' env SYNC=always OPS=2000 RECORDS=1000 kvd/bench/vs-redis.sh
# CPU time is read in clock ticks (10 ms): a run this short can read a tick less than the
# one-request run subtracted from it, so a figure may be -0.00 or below.
check cpu 'kvd put / kvcli +-?[0-9.]+' env OPS=2000 RECORDS=1000 kvd/bench/cpu.sh
check vs-rocksdb '^fillrandom ops/s +[0-9]+' env NUM=20000 kvd/bench/vs-rocksdb.sh
check "group commit" 'fillrandom' target/release/kvd bench-storage --benchmarks fillrandom \
  --sync always --threads 8 --num 2000
check replication 'throughput ratio [0-9.]+' env OPS=3000 RECORDS=1000 kvd/bench/replication.sh
check tails 'p99.9 vs quiet: anti-entropy [0-9.]+x, compaction [0-9.]+x' env SECS=2 RECORDS=2000 CLIENTS=5 kvd/bench/tails.sh
check footprint 'bytes per key' env RECORDS=3000 kvd/bench/footprint.sh
check steady '^2 +[0-9]+' env ROUNDS=2 OPS=3000 RECORDS=1000 kvd/bench/steady.sh
check cost 'instructions per put: [0-9,]+' env OPS=300 CLIENTS=4 kvd/bench/cost.sh
