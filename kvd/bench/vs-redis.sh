#!/usr/bin/env bash
# One node of kvd beside one Redis, same machine, same run: writes and reads of 100-byte
# values by 50 clients over 100,000 keys, with the same fsync cadence on both sides.
#
#   kvd/bench/vs-redis.sh                 # --sync interval vs appendfsync everysec
#   SYNC=always kvd/bench/vs-redis.sh     # --sync always   vs appendfsync always
#   OPS=20000 kvd/bench/vs-redis.sh       # a quicker run
#   THREADS=1 kvd/bench/vs-redis.sh       # one worker thread for kvd and for kvcli, as Redis
#
# Needs redis-server and redis-benchmark (apt-get install -y redis-server redis-tools); builds
# kvd and kvcli in release mode. Ports are picked at run time; everything started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."

SYNC=${SYNC:-interval}
OPS=${OPS:-200000}
CLIENTS=${CLIENTS:-50}
RECORDS=${RECORDS:-100000}
SIZE=${SIZE:-100}
ROUNDS=${ROUNDS:-1}
case "$SYNC" in
  interval) REDIS_FSYNC=everysec ;;
  always) REDIS_FSYNC=always ;;
  none) REDIS_FSYNC=no ;;
  *) echo "SYNC must be interval, always or none" >&2; exit 2 ;;
esac

source kvd/bench/pair.sh

# redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
redis_run() {
  redis-benchmark -p "$RPORT" -t set,get -n "$OPS" -c "$CLIENTS" -d "$SIZE" -r "$RECORDS" --csv 2>/dev/null \
    | python3 -c '
import csv, sys
for row in csv.reader(sys.stdin):
    if row and row[0] in ("SET", "GET"):
        print(row[0], row[1], row[6])'
}
kvd_run() {
  "$KVCLI" --node "ws://127.0.0.1:$KPORT" bench --workload "$1" --clients "$CLIENTS" --ops "$OPS" \
    --records "$RECORDS" --value-size "$SIZE" ${THREADS:+--threads "$THREADS"} --json \
    | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d["errors"]:
    print("errors:", d["errors"], d["first_error"], file=sys.stderr)
print(d["ops_per_sec"], d["latency_us"]["p99"] / 1000.0)'
}

echo "kvd --sync $SYNC vs redis appendfsync $REDIS_FSYNC: $OPS ops, $CLIENTS clients, $RECORDS keys, $SIZE B values, $(nproc) cores"
RATIOS=()
for round in $(seq "$ROUNDS"); do
  # Odd rounds run Redis first, even rounds kvd first: a machine that speeds up or slows
  # down during a run favours neither side over an even number of rounds. Each side writes
  # (so its keys exist) before it reads.
  if [ $((round % 2)) -eq 1 ]; then
    read -r _ rset rset99 <<<"$(redis_run | grep SET)"
    read -r kput kput99 <<<"$(kvd_run put)"
    read -r kget kget99 <<<"$(kvd_run get)"
    read -r _ rget rget99 <<<"$(redis_run | grep GET)"
  else
    read -r kput kput99 <<<"$(kvd_run put)"
    read -r _ rset rset99 <<<"$(redis_run | grep SET)"
    read -r _ rget rget99 <<<"$(redis_run | grep GET)"
    read -r kget kget99 <<<"$(kvd_run get)"
  fi
  RATIOS+=("$(python3 -c "print($kput / $rset, $kget / $rget)")")
  python3 - "$round" "$kput" "$kput99" "$rset" "$rset99" "$kget" "$kget99" "$rget" "$rget99" <<'PY'
import sys
r, kp, kp99, rs, rs99, kg, kg99, rg, rg99 = sys.argv[1], *map(float, sys.argv[2:])
print(f"round {r}")
print(f"  {'':6} {'kvd ops/s':>10} {'p99 ms':>7} {'redis ops/s':>12} {'p99 ms':>7} {'ratio':>6}")
print(f"  {'write':6} {kp:10.0f} {kp99:7.2f} {rs:12.0f} {rs99:7.2f} {kp/rs:6.2f}")
print(f"  {'read':6} {kg:10.0f} {kg99:7.2f} {rg:12.0f} {rg99:7.2f} {kg/rg:6.2f}")
PY
done
if [ "$ROUNDS" -gt 1 ]; then
  printf '%s\n' "${RATIOS[@]}" | python3 -c '
import statistics, sys
rows = [tuple(map(float, line.split())) for line in sys.stdin if line.strip()]
for name, i in (("write", 0), ("read", 1)):
    xs = [r[i] for r in rows]
    print(f"{name} ratio over {len(xs)} rounds: median {statistics.median(xs):.2f}, min {min(xs):.2f}, max {max(xs):.2f}")'
fi
