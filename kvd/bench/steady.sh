#!/usr/bin/env bash
# Writes on one node as it fills: ROUNDS rounds of `kvcli bench --workload put` against the
# same kvd (`--n 1`, `--sync interval`), each loading RECORDS keys and then writing OPS times,
# so memtables flush to tables as the rounds go on. Per round: puts/s, p99, kvd's CPU per
# request (user + kernel from /proc, load phase included: RECORDS gets and puts plus OPS
# puts), and the node's tables, flushes and compactions; at the end, the CPU of each of kvd's
# threads (flush and compaction run at nice +10; thread names are cut to 15 bytes, so
# kvd-storage-com is the commit and compaction threads together).
#   kvd/bench/steady.sh            # ROUNDS=5 OPS=200000 RECORDS=100000 CLIENTS=50 SIZE=100
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
OPS=${OPS:-200000}
RECORDS=${RECORDS:-100000}
CLIENTS=${CLIENTS:-50}
SIZE=${SIZE:-100}
source kvd/bench/lib.sh
PORT=$(free_port)
"$KVD" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --n 1 --w 1 --r 1 --sync interval \
  --anti-entropy-interval-s 0 >"$WORK/kvd.log" 2>&1 &
PID=$!
wait_health "127.0.0.1:$PORT"
ticks() { cut -d" " -f14,15 "/proc/$PID/stat" | awk '{print $1 + $2}'; }
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
echo "kvd --sync interval, one node: $ROUNDS rounds of $RECORDS keys loaded + $OPS puts, $CLIENTS clients, $SIZE B values"
printf '%-6s %9s %7s %12s %7s %8s %12s\n' round "puts/s" "p99 ms" "kvd us/req" tables flushes compactions
for round in $(seq "$ROUNDS"); do
  before=$(ticks)
  read -r rate p99 <<<"$("$KVCLI" --node "ws://127.0.0.1:$PORT" bench --workload put --clients "$CLIENTS" \
    --ops "$OPS" --records "$RECORDS" --value-size "$SIZE" --json \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["ops_per_sec"], d["latency_us"]["p99"] / 1000)')"
  after=$(ticks)
  python3 - "$round" "$rate" "$p99" "$before" "$after" "$(getconf CLK_TCK)" "$((2 * RECORDS + OPS))" \
    "$(find "$WORK/data" -name '*.sst' | wc -l)" "$(metric kv_storage_flushes_total)" \
    "$(metric kv_storage_compactions_total)" <<'PY'
import sys
r, rate, p99, a, b, tck, reqs, tables, fl, co = sys.argv[1:]
us = (int(b) - int(a)) / int(tck) / int(reqs) * 1e6
print(f"{r:<6} {float(rate):9.0f} {float(p99):7.2f} {us:12.1f} {tables:>7} {fl:>8} {co:>12}")
PY
done
echo "CPU seconds by thread (user + kernel):"
for t in /proc/$PID/task/*; do
  echo "$(cat "$t/comm") $(cut -d" " -f14,15 "$t/stat")"
done | awk -v tck="$(getconf CLK_TCK)" '{cpu[$1] += ($2 + $3) / tck} END {for (n in cpu) printf "  %-18s %7.2f\n", n, cpu[n]}' | sort
