#!/usr/bin/env bash
# The cost of replication: YCSB-A (50% reads, 50% updates, zipfian) against one node (`--n 1`)
# and against three nodes (N=3, W=2, R=2), same client, same run, `--sync interval`.
#   kvd/bench/replication.sh            # OPS=100000 CLIENTS=50 RECORDS=100000
#   ROUNDS=5 kvd/bench/replication.sh   # five rounds, each side first in turn; medians
# The two runs of a round are a minute or less apart, but this machine's speed moves by a
# third between minutes: one round's ratio has ranged 0.33-0.62 for the same build. Several
# rounds, with the one-node run first in odd rounds and second in even ones, and the median
# ratio, say what one round cannot.
# Builds kvd and kvcli in release mode; ports are picked at run time; everything is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS=${OPS:-100000}
CLIENTS=${CLIENTS:-50}
RECORDS=${RECORDS:-100000}
WORKLOAD=${WORKLOAD:-a}
ROUNDS=${ROUNDS:-1}
STOP_SIGNAL=TERM # kvd dev stops its nodes on SIGTERM (SIGINT is ignored by a background job)
source kvd/bench/lib.sh

run() { # run NODES N W R
  local port attempt log
  # kvd dev takes the ports from --base-port on: one next to a free port can be taken by the
  # time a node binds it; dev then says so and exits, and another base port is tried.
  for attempt in 1 2 3; do
    port=$(free_port)
    rm -rf "$WORK/dev"
    # A log of its own per start: the background job creates (truncates) its file only once
    # it runs, and an earlier run's "is ready" must never be read as this one's.
    log="$WORK/dev-$1-$attempt.log"
    "$KVD" dev --nodes "$1" --base-port "$port" --dir "$WORK/dev" --n "$2" --w "$3" --r "$4" \
      --sync interval >"$log" 2>&1 &
    PID=$!
    while kill -0 "$PID" 2>/dev/null && ! grep -q "is ready" "$log" 2>/dev/null; do sleep 0.2; done
    grep -q "is ready" "$log" 2>/dev/null && break
    wait "$PID" 2>/dev/null || true
    PID=
  done
  [ -n "$PID" ] || { echo "kvd dev did not start:" >&2; cat "$log" >&2; exit 1; }
  "$KVCLI" --node "ws://127.0.0.1:$port" bench --workload "$WORKLOAD" --clients "$CLIENTS" \
    --ops "$OPS" --records "$RECORDS" --json
  kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
}
# Not in $(...): run must set PID in this shell, so the exit trap stops a cluster left running.
: >"$WORK/ratios"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run 1 1 1 1 >"$WORK/one.json"
    run 3 3 2 2 >"$WORK/three.json"
  else
    run 3 3 2 2 >"$WORK/three.json"
    run 1 1 1 1 >"$WORK/one.json"
  fi
  [ "$ROUNDS" -gt 1 ] && echo "round $round"
  python3 - "$(cat "$WORK/one.json")" "$(cat "$WORK/three.json")" "$WORKLOAD" "$WORK/ratios" <<'PY'
import json, sys
one, three = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for d in (one, three):
    if d["errors"]:
        print("errors:", d["errors"], d["first_error"], file=sys.stderr)
o, t = one["ops_per_sec"], three["ops_per_sec"]
op99, tp99 = one["latency_us"]["p99"] / 1000, three["latency_us"]["p99"] / 1000
print(f"YCSB-{sys.argv[3].upper()}: 1 node {o:,.0f} ops/s (p99 {op99:.2f} ms); "
      f"3 nodes N=3 W=2 R=2 {t:,.0f} ops/s (p99 {tp99:.2f} ms)")
print(f"throughput ratio {t / o:.2f} (target >= 0.4), p99 ratio {tp99 / op99:.2f} (target <= 3)")
with open(sys.argv[4], "a") as f:
    f.write(f"{t / o} {tp99 / op99}\n")
PY
done
if [ "$ROUNDS" -gt 1 ]; then
  python3 - "$WORK/ratios" <<'PY'
import statistics, sys
rows = [tuple(map(float, line.split())) for line in open(sys.argv[1]) if line.strip()]
for name, i in (("throughput", 0), ("p99", 1)):
    xs = [r[i] for r in rows]
    print(f"{name} ratio over {len(xs)} rounds: median {statistics.median(xs):.2f}, "
          f"min {min(xs):.2f}, max {max(xs):.2f}")
PY
fi
