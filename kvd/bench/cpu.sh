#!/usr/bin/env bash
# CPU time per request, user and kernel, of each process of the one-node comparison with
# Redis (kvd/bench/vs-redis.sh): kvd and kvcli, redis-server and redis-benchmark, side by side
# in one run. Throughput on a shared 2-core machine moves by a third between runs; CPU per
# request moves much less, and it says where the time goes (server or client, user or kernel).
#
#   kvd/bench/cpu.sh                 # 300,000 puts and gets, 50 clients, 20,000 keys, 100 B
#   OPS=100000 ROUNDS=3 kvd/bench/cpu.sh
#   THREADS=1 kvd/bench/cpu.sh       # one worker thread for kvd and for kvcli
#   SYNC=always kvd/bench/cpu.sh     # --sync always vs appendfsync always (default: interval
#                                    # vs everysec)
#
# Server CPU is read from /proc/PID/stat around each client run, client CPU from the child's
# rusage, and the whole machine's busy time (every CPU's user, kernel, interrupt and softirq
# time, from /proc/stat) too: what the two processes are charged is not all a request costs,
# since network softirq work and the kernel's writeback threads are charged to neither. The
# machine column also counts whatever else the machine ran meanwhile. `kvcli bench` first writes its records (a get and a put each) before the measured
# phase; a run of one operation measures that load alone, and is subtracted, so the figures
# are those of the measured requests only. Needs redis-server and redis-benchmark
# (apt-get install -y redis-server redis-tools); builds kvd and kvcli in release mode. Ports
# are picked at run time; everything started is stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."

OPS=${OPS:-300000}
CLIENTS=${CLIENTS:-50}
RECORDS=${RECORDS:-20000}
SIZE=${SIZE:-100}
ROUNDS=${ROUNDS:-1}
SYNC=${SYNC:-interval}
case "$SYNC" in
  interval) REDIS_FSYNC=everysec ;;
  always) REDIS_FSYNC=always ;;
  none) REDIS_FSYNC=no ;;
  *) echo "SYNC must be interval, always or none" >&2; exit 2 ;;
esac
source kvd/bench/pair.sh

# measure SERVER_PID CMD...: runs CMD with stdout to $WORK/out and prints
# "server_user server_sys client_user client_sys machine_busy" in seconds.
measure() {
  local pid=$1
  shift
  python3 - "$pid" "$WORK/out" "$@" <<'PY'
import os, resource, subprocess, sys
pid, out, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
tick = os.sysconf("SC_CLK_TCK")
def server():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / tick, int(f[12]) / tick  # utime, stime
def machine():
    # cpu  user nice system idle iowait irq softirq steal ...
    f = list(map(int, open("/proc/stat").readline().split()[1:9]))
    return (f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) / tick
before, busy = server(), machine()
with open(out, "w") as o:
    subprocess.run(cmd, stdout=o, stderr=subprocess.DEVNULL, check=True)
after, busy = server(), machine() - busy
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(after[0] - before[0], after[1] - before[1], r.ru_utime, r.ru_stime, busy)
PY
}
kvcli_bench() { # kvcli_bench WORKLOAD OPS
  measure "$KPID" "$KVCLI" --node "ws://127.0.0.1:$KPORT" bench --workload "$1" --clients "$CLIENTS" \
    --ops "$2" --records "$RECORDS" --value-size "$SIZE" ${THREADS:+--threads "$THREADS"} --json
}
redis_bench() { # redis_bench TEST OPS
  measure "$RPID" redis-benchmark -p "$RPORT" -t "$1" -n "$2" -c "$CLIENTS" -d "$SIZE" -r "$RECORDS" -q
}
row() { # row NAME OPS "a b c d e" ["base: a b c d e"]
  python3 - "$@" <<'PY'
import sys
name, ops, run = sys.argv[1], int(sys.argv[2]), list(map(float, sys.argv[3].split()))
base = list(map(float, sys.argv[4].split())) if len(sys.argv) > 4 else [0.0] * 5
su, ss, cu, cs, m = (1e6 * (r - b) / ops for r, b in zip(run, base))
print(f"  {name:22} {su + ss:7.2f} {su:6.2f} {ss:6.2f}   {cu + cs:7.2f} {cu:6.2f} {cs:6.2f}   {m:7.2f}")
PY
}

echo "CPU µs per request, kvd --sync $SYNC vs redis appendfsync $REDIS_FSYNC: $OPS requests, $CLIENTS clients, $RECORDS keys, $SIZE B values, $(nproc) cores"
kvcli_bench put 1 >/dev/null # every record exists before the first measured load
redis_bench set "$OPS" >/dev/null
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  echo "                          server   user kernel    client   user kernel   machine"
  for w in put get; do
    load=$(kvcli_bench "$w" 1)
    run=$(kvcli_bench "$w" "$OPS")
    row "kvd $w / kvcli" "$OPS" "$run" "$load"
  done
  for t in set get; do
    row "redis $t / benchmark" "$OPS" "$(redis_bench "$t" "$OPS")"
  done
done
