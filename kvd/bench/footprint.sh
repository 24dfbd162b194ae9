#!/usr/bin/env bash
# Memory and disk per key of one node (`--n 1`): load RECORDS distinct keys of SIZE-byte values
# with `kvcli bench --workload put` (each key written once by its load phase), then read the
# node's resident memory and its data dir's size, before and after a full compaction
# (restart: the memtable is flushed on a clean stop).
#   kvd/bench/footprint.sh            # RECORDS=1000000 SIZE=100
set -euo pipefail
cd "$(dirname "$0")/../.."
RECORDS=${RECORDS:-1000000}
SIZE=${SIZE:-100}
source kvd/bench/lib.sh
PORT=$(free_port)
start() {
  "$KVD" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --n 1 --w 1 --r 1 --sync interval \
    --anti-entropy-interval-s 0 >>"$WORK/kvd.log" 2>&1 &
  PID=$!
  wait_health "127.0.0.1:$PORT"
}
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$PID/status"; }
start
idle=$(rss_mib)
# The bench's load phase writes each of the RECORDS keys (key-<i>) once; the measured phase
# is then a single put, so each key holds one version.
"$KVCLI" --node "ws://127.0.0.1:$PORT" bench --workload put --clients 50 --ops 1 \
  --records "$RECORDS" --value-size "$SIZE" --json >"$WORK/load.json"
loaded=$(rss_mib)
keys=$(curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^kv_keys / {print $2}')
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
disk=$(du -sb "$WORK/data" | cut -f1)
start
restarted=$(rss_mib)
python3 - "$idle" "$loaded" "$restarted" "$disk" "${keys:-0}" "$SIZE" <<'PY'
import sys
idle, loaded, restarted = map(float, sys.argv[1:4])
disk, keys, size = int(sys.argv[4]), int(float(sys.argv[5])), int(sys.argv[6])
keys = keys or 1
raw = keys * (size + 10)  # value + a key like key-123456
print(f"keys held: {keys:,}")
print(f"resident memory: idle {idle:.1f} MiB, after the load {loaded:.1f} MiB "
      f"({(loaded - idle) / keys * 1e6:.1f} MiB per million keys: memtables, index and cache, not the data, which is on disk), after a restart {restarted:.1f} MiB")
print(f"on disk after a clean stop: {disk / 2**20:.1f} MiB = {disk / keys:.0f} bytes per key "
      f"({disk / raw:.2f}x the raw key+value bytes; each stored value is a versioned sibling set)")
PY
