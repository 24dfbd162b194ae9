#!/usr/bin/env bash
# Offline rehearsal of the Kubernetes setup, without a cluster: a stand-in `kubectl` that
# resizes a "StatefulSet" of local kvd processes (pod i = kvd-i listening on 127.0.1.i:7070,
# started through the image's entrypoint with the StatefulSet's environment and arguments,
# one at a time, its volume deleted on scale-in), driven by `kvcli autoscale` with the
# arguments of k8s/autoscaler.yaml (only the node address, targets and timings are lowered
# so that it runs in a minute or two). Under a `kvcli bench` load it must grow the set to 4
# pods, drain and remove the highest one when the load stops, and grow again with a fresh id.
#
#   cargo build -p kvd -p kvcli && kvd/deploy/test/simulate-k8s.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
root="$(cd "$deploy/../.." && pwd)"
bin="${BIN_DIR:-$root/target/debug}"
sim="$(mktemp -d /tmp/kvd-k8s-sim.XXXXXX)"
echo "simulation in $sim"

# The stand-in kubectl: `kubectl scale statefulset kvd --current-replicas=C --replicas=T`.
mkdir -p "$sim/bin"
cat > "$sim/bin/kubectl" <<KUBECTL
#!/usr/bin/env bash
set -euo pipefail
sim="$sim"; bin="$bin"; deploy="$deploy"
KUBECTL
cat >> "$sim/bin/kubectl" <<'KUBECTL'
[ "$1 $2 $3" = "scale statefulset kvd" ] || { echo "kubectl stand-in: unexpected: $*" >&2; exit 2; }
shift 3
current=""; target=""
for a in "$@"; do
  case "$a" in
    --current-replicas=*) current="${a#*=}" ;;
    --replicas=*) target="${a#*=}" ;;
    *) echo "kubectl stand-in: unexpected flag $a" >&2; exit 2 ;;
  esac
done
have="$(cat "$sim/replicas" 2>/dev/null || echo 0)"
if [ -n "$current" ] && [ "$current" != "$have" ]; then
  echo "error: Expected replicas to be $current, was $have" >&2; exit 1
fi
start_pod() { # like the StatefulSet: env and args of statefulset.yaml, hostname kvd-i
  local i="$1" ip="127.0.1.$1"
  mkdir -p "$sim/pod$i/bin"
  printf '#!/bin/sh\nif [ "${1:-}" = -i ]; then echo %s; else echo %s; fi\n' "$ip" "$ip" > "$sim/pod$i/bin/hostname"
  chmod +x "$sim/pod$i/bin/hostname"
  ( PATH="$sim/pod$i/bin:$bin:$PATH" KVD_ID="kvd-$i" KVD_ID_SUFFIX=random \
    KVD_SEEDS="127.0.1.0:7070 127.0.1.1:7070" KVD_DATA_DIR="$sim/pod$i/data" \
    KVD_WWW_DIR="$deploy/../../www" KVD_SDK_DIR="$sim/none" \
    setsid sh "$deploy/entrypoint.sh" --n 3 --w 2 --r 2 --sync always --rack "sim-$i" \
      --gossip-interval-ms 300 > "$sim/pod$i.log" 2>&1 & echo $! > "$sim/pod$i.pid" )
  # OrderedReady: the next pod waits for this one's readiness probe (/ready).
  for _ in $(seq 1 100); do
    if KVD_LISTEN="$ip:7070" bash "$deploy/healthcheck.sh" /ready 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "pod kvd-$i never became ready" >&2; cat "$sim/pod$i.log" >&2; exit 1
}
stop_pod() { # SIGTERM, then the volume goes (whenScaled: Delete)
  local i="$1" pid
  pid="$(cat "$sim/pod$i.pid")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$sim/pod$i/data" "$sim/pod$i.pid"
}
i="$have"; while [ "$i" -lt "$target" ]; do start_pod "$i"; i=$((i + 1)); done
i="$have"; while [ "$i" -gt "$target" ]; do i=$((i - 1)); stop_pod "$i"; done
echo "$target" > "$sim/replicas"
echo "statefulset.apps/kvd scaled ($have -> $target)"
KUBECTL
chmod +x "$sim/bin/kubectl"

cleanup() {
  [ -n "${scaler:-}" ] && kill -INT "$scaler" 2>/dev/null || true
  for f in "$sim"/pod*.pid; do [ -e "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT

export PATH="$sim/bin:$bin:$PATH"
kubectl scale statefulset kvd --replicas=3

# The autoscaler's arguments from the manifest, with the test's lower settings.
mapfile -t args < <(python3 - "$deploy/k8s/autoscaler.yaml" "$sim/autoscale" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment"]
args = docs[0]["spec"]["template"]["spec"]["containers"][0]["args"]
override = {"--node": "ws://127.0.1.0:7070", "--target-ops": "30", "--max": "4",
            "--interval-s": "1", "--cooldown-s": "3", "--dir": sys.argv[2],
            "--settle-timeout-s": "60", "--max-p99-ms": "5000"}
out, i = [], 0
while i < len(args):
    a = args[i]
    if a in override and i + 1 < len(args) and not args[i + 1].startswith("--"):
        out += [a, override[a]]; i += 2; continue
    out.append(a); i += 1
out += ["--low-ops", "10", "--window-s", "4"]
print("\n".join(out))
PY
)
echo "kvcli ${args[*]}"
kvcli "${args[@]}" > "$sim/autoscale.out" 2> "$sim/autoscale.err" &
scaler=$!

wait_for() { # wait_for PATTERN SECONDS
  for _ in $(seq 1 "$2"); do grep -q "$1" "$sim/autoscale.out" && return 0; sleep 1; done
  echo "FAIL: no '$1' in the autoscaler's output" >&2
  cat "$sim/autoscale.out" "$sim/autoscale.err" >&2; exit 1
}
bench() { kvcli --node ws://127.0.1.0:7070 bench --workload put --duration 10 --clients 4 --records 500 > "$sim/bench$1.out"; }

bench 1
wait_for '"event":"joined"' 60
[ "$(cat "$sim/replicas")" = 4 ] || { echo "FAIL: not 4 replicas" >&2; exit 1; }
first="$(grep -o 'kvd-3-[0-9a-f]*' "$sim/pod3.log" | head -1)"
echo "grew to 4 pods; the new one is $first"
wait_for '"event":"retire"' 60
[ "$(cat "$sim/replicas")" = 3 ] || { echo "FAIL: not back to 3 replicas" >&2; exit 1; }
grep '"action":"scale_in"' "$sim/autoscale.out" | grep -q "\"node\":\"$first\"" \
  || { echo "FAIL: the scale-in did not remove the highest pod $first" >&2; exit 1; }
echo "drained $first and scaled back to 3"
sleep 4
bench 2
wait_for '"new":\["kvd-3-' 60
second="$(kvcli --node ws://127.0.1.0:7070 --json status --sample 0 | grep -o 'kvd-3-[0-9a-f]*' | sort -u | grep -v "$first" | head -1)"
[ -n "$second" ] || { echo "FAIL: the re-created pod kvd-3 has no new id" >&2; exit 1; }
echo "grew again: the re-created pod joined as $second (the one that left was $first)"
kvcli --node ws://127.0.1.0:7070 status --sample 0
echo "k8s simulation passed"
