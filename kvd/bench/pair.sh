# Sourced by the one-node comparisons with Redis (vs-redis.sh, cpu.sh): starts one kvd
# (`--n 1`, `--sync $SYNC`) and one redis-server (AOF on, `appendfsync $REDIS_FSYNC`) on ports
# picked at run time, in a work dir removed at exit, and stops both at exit. With THREADS set,
# kvd runs that many worker threads (`--worker-threads`), and so should the client. Sets what
# lib.sh sets, and KPORT, KPID, RPORT, RPID.
for tool in redis-server redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install -y redis-server redis-tools" >&2; exit 2; }
done
source kvd/bench/lib.sh

RPORT=$(free_port)
mkdir -p "$WORK/redis"
redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$WORK/redis" --save '' \
  --appendonly yes --appendfsync "$REDIS_FSYNC" --daemonize no >"$WORK/redis.log" 2>&1 &
RPID=$!
PIDS+=("$RPID")
KPORT=$(free_port)
"$KVD" --listen "127.0.0.1:$KPORT" --data-dir "$WORK/kvd" --n 1 --w 1 --r 1 --sync "$SYNC" \
  --anti-entropy-interval-s 0 ${THREADS:+--worker-threads "$THREADS"} >"$WORK/kvd.log" 2>&1 &
KPID=$!
PIDS+=("$KPID")
for _ in $(seq 100); do
  redis-cli -p "$RPORT" ping >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$KPORT/health" >/dev/null && break
  sleep 0.1
done
