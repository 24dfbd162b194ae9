#!/usr/bin/env bash
# The cost of replication: YCSB-A (50% reads, 50% updates, zipfian) against one node (`--n 1`)
# and against three nodes (N=3, W=2, R=2), same client, same run, `--sync interval`.
#   kvd/bench/replication.sh            # OPS=100000 CLIENTS=50 RECORDS=100000
# Builds kvd and kvcli in release mode; ports are picked at run time; everything is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS=${OPS:-100000}
CLIENTS=${CLIENTS:-50}
RECORDS=${RECORDS:-100000}
WORKLOAD=${WORKLOAD:-a}
cargo build --release -q -p kvd -p kvcli
KVD=$PWD/target/release/kvd
KVCLI=$PWD/target/release/kvcli
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill -INT "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # run NODES N W R
  local port
  port=$(free_port)
  rm -rf "$WORK/dev"
  "$KVD" dev --nodes "$1" --base-port "$port" --dir "$WORK/dev" --n "$2" --w "$3" --r "$4" \
    --sync interval >"$WORK/dev.log" 2>&1 &
  PID=$!
  for _ in $(seq 300); do
    grep -q "ready" "$WORK/dev.log" 2>/dev/null && break
    sleep 0.2
  done
  "$KVCLI" --node "ws://127.0.0.1:$port" bench --workload "$WORKLOAD" --clients "$CLIENTS" \
    --ops "$OPS" --records "$RECORDS" --json
  kill -INT "$PID"; wait "$PID" 2>/dev/null || true; PID=
}
one=$(run 1 1 1 1)
three=$(run 3 3 2 2)
python3 - "$one" "$three" "$WORKLOAD" <<'PY'
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
PY
