#!/usr/bin/env bash
# Tail latency under background work: YCSB-A against 4 nodes (N=3 W=2 R=2, --sync interval),
# p99.9 measured quiet, then while anti-entropy runs over and over (`repair` in a loop on
# every node), then while major compactions run back to back (`compact --all` in a loop: each
# flushes a node's memtable and merges all its tables), then while a node that was down receives its hints (and its engine flushes and
# compacts what arrives).
#   kvd/bench/tails.sh            # SECS=20 CLIENTS=20 RECORDS=50000
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${SECS:-20}
CLIENTS=${CLIENTS:-20}
RECORDS=${RECORDS:-50000}
source kvd/bench/lib.sh
# Node i's pid and address (PIDS, stopped at exit, is indexed by node number here).
declare -A ADDR=()
for i in 1 2 3 4; do ADDR[$i]="127.0.0.1:$(free_port)"; done
LOOP=
on_exit() { [ -n "$LOOP" ] && kill "$LOOP" 2>/dev/null; }
start() { # start I
  local seed=()
  [ "$1" != 1 ] && seed=(--seed "${ADDR[1]}")
  "$KVD" --id "n$1" --listen "${ADDR[$1]}" --data-dir "$WORK/n$1" "${seed[@]}" --n 3 --w 2 --r 2 \
    --sync interval --anti-entropy-interval-s 0 --gossip-interval-ms 300 >>"$WORK/n$1.log" 2>&1 &
  PIDS[$1]=$!
  wait_health "${ADDR[$1]}"
}
for i in 1 2 3 4; do start "$i"; sleep 1; done
sleep 2
bench() { # bench WORKLOAD SECS -> "ops/s p99_us p999_us"
  "$KVCLI" --node "ws://${ADDR[1]}" bench --workload "$1" --duration "$2" --clients "$CLIENTS" \
    --records "$RECORDS" --json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); l=d["latency_us"]; print(round(d["ops_per_sec"]), l["p99"], l["p999"], d["errors"])'
}
report() { # report NAME "ops p99 p999 errors"
  read -r ops p99 p999 errors <<<"$2"
  printf "%-34s %9s ops/s  p99 %6.2f ms  p99.9 %6.2f ms  errors %s\n" "$1" "$ops" \
    "$(echo "$p99/1000" | bc -l)" "$(echo "$p999/1000" | bc -l)" "$errors"
  echo "$p999"
}
bench a 5 >/dev/null # warm-up: every record exists
quiet=$(report "quiet" "$(bench a "$SECS")")
echo "$quiet" | head -1
(while true; do for i in 1 2 3 4; do "$KVCLI" --node "ws://${ADDR[$i]}" --json repair >/dev/null 2>&1 || true; done; done) &
LOOP=$!
ae=$(report "anti-entropy (repair in a loop)" "$(bench a "$SECS")")
echo "$ae" | head -1
kill "$LOOP"; wait "$LOOP" 2>/dev/null || true; LOOP=
(while true; do "$KVCLI" --node "ws://${ADDR[1]}" --json compact --all >>"$WORK/compactions" 2>&1 || true; done) &
LOOP=$!
comp=$(report "compaction (compact in a loop)" "$(bench a "$SECS")")
kill "$LOOP"; wait "$LOOP" 2>/dev/null || true; LOOP=
runs=$(grep -o '"tables_after"' "$WORK/compactions" | wc -l)
echo "$comp" | head -1 | sed "s/\$/  ($runs compactions)/"
# Hints: n4 down while writes go on (its writes are kept as hints by stand-ins), then back
# while the load continues.
kill -9 "${PIDS[4]}"; wait "${PIDS[4]}" 2>/dev/null || true
bench put "$SECS" >/dev/null
pending=$(curl -sf "http://${ADDR[1]}/metrics" "http://${ADDR[2]}/metrics" "http://${ADDR[3]}/metrics" | awk '/^kv_hints_pending[{]/ {s+=$2} END {print s+0}')
start 4
hints=$(report "hint delivery ($pending hints)" "$(bench a "$SECS")")
echo "$hints" | head -1
python3 - "$(echo "$quiet" | tail -1)" "$(echo "$ae" | tail -1)" "$(echo "$comp" | tail -1)" "$(echo "$hints" | tail -1)" <<'PY'
import sys
q, ae, c, h = map(float, sys.argv[1:])
print(f"p99.9 vs quiet: anti-entropy {ae / q:.2f}x, compaction {c / q:.2f}x, hint delivery {h / q:.2f}x (target <= 5x)")
PY
