#!/usr/bin/env bash
# The storage engine beside RocksDB's db_bench, same machine, same run, matching settings:
# fillrandom, then readrandom, of NUM keys (16-byte keys, 100-byte values, commit log written
# but not fsynced, no compression, 8 MiB block cache, 10-bit bloom filters, one thread).
# Prints each side's ops/s, the ratio, and write amplification measured two ways:
#   engine: bytes written by memtable flushes and compactions / user bytes (keys + values);
#           db_bench's rocksdb.flush.write.bytes + rocksdb.compact.write.bytes (--statistics)
#   disk:   bytes the process dirtied in the page cache (/proc/PID/io write_bytes: what the
#           kernel writes to the device, commit log included) / user bytes
#
#   kvd/bench/vs-rocksdb.sh              # 1M keys
#   NUM=200000 ROUNDS=2 kvd/bench/vs-rocksdb.sh
#
# Needs db_bench (apt-get install -y rocksdb-tools); builds kvd in release mode.
set -euo pipefail
cd "$(dirname "$0")/../.."

NUM=${NUM:-1000000}
ROUNDS=${ROUNDS:-1}
KEY=16
VALUE=100

command -v db_bench >/dev/null || { echo "db_bench is missing: apt-get install -y rocksdb-tools" >&2; exit 2; }
source kvd/bench/lib.sh # kvcli too, as the other scripts: the same features, no rebuild between them
USER_BYTES=$((NUM * (KEY + VALUE)))

# Runs "$@" in a child shell; prints the write_bytes of that shell after its child was reaped
# (the kernel adds a reaped child's I/O to its parent's) on the last line.
with_io() {
  bash -c '"$@" >"'"$WORK"'/out" 2>&1; grep "^write_bytes" /proc/$$/io | awk "{print \$2}"' _ "$@"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

for round in $(seq 1 "$ROUNDS"); do
  rm -rf "$WORK/kvd" "$WORK/rocks"
  kvd_disk=$(with_io "$KVD" bench-storage --benchmarks fillrandom,readrandom --num "$NUM" \
    --key-size $KEY --value-size $VALUE --sync none --cache-mb 8 --db "$WORK/kvd" --json)
  kvd_json=$(grep '^{' "$WORK/out" | tail -1)
  rocks_disk=$(with_io db_bench --benchmarks=fillrandom,readrandom --num="$NUM" \
    --key_size=$KEY --value_size=$VALUE --compression_type=none --cache_size=8388608 \
    --bloom_bits=10 --sync=0 --statistics=1 --db="$WORK/rocks")
  rocks_out=$(cat "$WORK/out")

  kvd_ops() { echo "$kvd_json" | python3 -c "import json,sys; r={x['benchmark']: x for x in json.load(sys.stdin)['results']}; print(r['$1']['ops_per_sec'])"; }
  kvd_fill=$(kvd_ops fillrandom)
  kvd_read=$(kvd_ops readrandom)
  kvd_wa=$(echo "$kvd_json" | python3 -c "import json,sys; r={x['benchmark']: x for x in json.load(sys.stdin)['results']}; print(r['fillrandom']['write_amplification'])")
  rocks_ops() { echo "$rocks_out" | awk -v b="$1" '$1 == b { for (i = 1; i <= NF; i++) if ($(i+1) == "ops/sec;" || $(i+1) == "ops/sec") print $i }'; }
  rocks_fill=$(rocks_ops fillrandom)
  rocks_read=$(rocks_ops readrandom)
  stat() { echo "$rocks_out" | awk -v s="$1" '$1 == s { print $4 }'; }
  rocks_flush=$(stat rocksdb.flush.write.bytes)
  rocks_comp=$(stat rocksdb.compact.write.bytes)
  rocks_wa=$(ratio "$(( ${rocks_flush:-0} + ${rocks_comp:-0} ))" "$USER_BYTES")

  echo "round $round: $NUM keys, $KEY B keys, $VALUE B values ($USER_BYTES user bytes)"
  printf '%-22s %14s %14s %8s\n' "" "kvd engine" "RocksDB" "ratio"
  printf '%-22s %14.0f %14.0f %8s\n' "fillrandom ops/s" "$kvd_fill" "$rocks_fill" "$(ratio "$kvd_fill" "$rocks_fill")x"
  printf '%-22s %14.0f %14.0f %8s\n' "readrandom ops/s" "$kvd_read" "$rocks_read" "$(ratio "$kvd_read" "$rocks_read")x"
  printf '%-22s %14.2f %14s %8s\n' "write amp (engine)" "$kvd_wa" "$rocks_wa" "$(ratio "$kvd_wa" "$rocks_wa")x"
  printf '%-22s %14s %14s %8s\n' "write amp (disk)" "$(ratio "$kvd_disk" "$USER_BYTES")" \
    "$(ratio "$rocks_disk" "$USER_BYTES")" "$(ratio "$kvd_disk" "$rocks_disk")x"
done
