#!/usr/bin/env bash
# Cost per request of one kvd node (`--n 1`, `--sync interval`), counted rather than timed, so
# the figures hold on a busy machine:
#   - CPU instructions per put and per get (valgrind callgrind, user space of kvd only; perf
#     stat is not supported on these VMs), counters zeroed after the load phase;
#   - heap allocations per put and per get (valgrind dhat: two runs, the difference / ops),
#     with `KVD_ALLOCATOR=system`: dhat sees only malloc, not the jemalloc kvd runs on.
#   kvd/bench/cost.sh            # OPS=5000 requests per phase by 10 clients
# Needs valgrind; builds kvd and kvcli in release mode. Ports are picked at run time.
set -euo pipefail
cd "$(dirname "$0")/../.."
OPS=${OPS:-5000}
CLIENTS=${CLIENTS:-10}
source kvd/bench/lib.sh

start() { # start TOOL_ARGS...: kvd under valgrind with the given tool options
  PORT=$(free_port)
  rm -rf "$WORK/data"
  valgrind "$@" "$KVD" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --n 1 --w 1 --r 1 \
    --sync interval --anti-entropy-interval-s 0 >"$WORK/kvd.log" 2>&1 &
  PID=$!
  wait_health "127.0.0.1:$PORT" 600 || { cat "$WORK/kvd.log" >&2; exit 1; }
}
stop() { kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
# Every bench run first loads its --records keys (a get and a put each); the per-request costs
# are solved for below. As many keys as requests: 10 clients on few keys would keep writing
# with stale contexts and measure sibling sets instead of requests.
LOADED=$OPS
bench() { # bench WORKLOAD OPS
  "$KVCLI" --node "ws://127.0.0.1:$PORT" --timeout 60 bench --workload "$1" --clients "$CLIENTS" \
    --ops "$2" --records "$LOADED" --json >/dev/null
}

# The measuring functions run in this shell (not in $(...)), so PID stays known to the exit
# trap; each leaves its figure in RESULT.
# Instructions: zero the counters after a warm-up, run one phase, dump.
instructions() { # instructions WORKLOAD
  start --tool=callgrind --callgrind-out-file="$WORK/cg.%p" --collect-atstart=yes
  bench put "$OPS" # warm-up: every record exists, connections and caches warm
  callgrind_control -z "$PID" >/dev/null 2>&1
  bench "$1" "$OPS"
  callgrind_control -d "$PID" >/dev/null 2>&1
  RESULT=$(grep -h "^summary:" "$WORK"/cg.*.[0-9]* 2>/dev/null | awk '{s+=$2} END {print s}')
  stop
  rm -f "$WORK"/cg.*
}
instructions put
put_ir=$RESULT
instructions get
get_ir=$RESULT

# Allocations: dhat's totals for two loads of different sizes; the difference is per request.
allocs() { # allocs WORKLOAD OPS
  KVD_ALLOCATOR=system start --tool=dhat --dhat-out-file=/dev/null
  bench "$1" "$2"
  stop
  RESULT=$(grep -o "Total: *[0-9,]* bytes in [0-9,]* blocks" "$WORK/kvd.log" | awk '{gsub(",","",$5); print $5}')
}
allocs put "$OPS"
pa=$RESULT
allocs put $((OPS * 3))
pb=$RESULT
allocs get "$OPS"
ga=$RESULT
allocs get $((OPS * 3))
gb=$RESULT
python3 - "$put_ir" "$get_ir" "$pa" "$pb" "$ga" "$gb" "$OPS" "$LOADED" <<'PY'
import sys
put_ir, get_ir, pa, pb, ga, gb, ops, loaded = map(int, sys.argv[1:])
# Each measured phase = its load (LOADED gets + LOADED puts) + OPS of its own requests:
#   put_ir = L*g + (L+O)*p,  get_ir = (L+O)*g + L*p
L, O = loaded, ops
d = (put_ir - get_ir) / O  # p - g
put_i = (put_ir + L * d) / (2 * L + O)
get_i = put_i - d
# Allocations: two runs of OPS and 3*OPS requests on the same load; the difference is 2*OPS.
put_a = (pb - pa) / (2 * ops)
get_a = (gb - ga) / (2 * ops)
print(f"kvd user-space instructions per put: {put_i:,.0f}")
print(f"kvd user-space instructions per get: {get_i:,.0f}")
print(f"kvd heap allocations per put: {put_a:.1f}")
print(f"kvd heap allocations per get: {get_a:.1f}")
PY
