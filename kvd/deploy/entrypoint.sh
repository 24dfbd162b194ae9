#!/bin/sh
# Starts kvd in a container. Every setting has a flag (see `kvd --help`); this script only
# works out the three that depend on where the container runs, then execs kvd with the
# container's arguments appended:
#
#   KVD_LISTEN     HOST:PORT to listen on and to tell peers. kvd gossips its listen address as
#                  is, so it must be this container's own IP, never 0.0.0.0.
#                  Default: the first address of `hostname -i`, port KVD_PORT (7070).
#   KVD_ID         node id for the first start (an empty data dir). Later starts take the id
#                  kept in the data dir. With KVD_ID_SUFFIX=random a random suffix is added
#                  (kvd-3-1f2e3d4c): a pod re-created with a new volume after a scale-in is then
#                  a newcomer that streams its ranges in, not the member that left.
#   KVD_SEEDS      space-separated HOST:PORT of nodes to join through. The node that is the
#                  first seed itself starts the cluster (no seeds); the others join through
#                  every seed but themselves.
#   KVD_DATA_DIR, KVD_WWW_DIR, KVD_SDK_DIR
#                  default /data, /usr/share/kvd/www, /usr/share/kvd/sdk.
set -eu

port="${KVD_PORT:-7070}"
if [ -z "${KVD_LISTEN:-}" ]; then
    ip="$(hostname -i | awk '{print $1}')"
    case "$ip" in *:*) ip="[$ip]" ;; esac
    KVD_LISTEN="$ip:$port"
fi
data="${KVD_DATA_DIR:-/data}"
www="${KVD_WWW_DIR:-/usr/share/kvd/www}"
sdk="${KVD_SDK_DIR:-/usr/share/kvd/sdk}"

me="$(hostname)"
# A seed names this node when its host is the hostname or starts with "hostname." (the
# StatefulSet DNS name pod.service...).
is_me() {
    host="${1%:*}"
    [ "$host" = "$me" ] || [ "${host#"$me".}" != "$host" ]
}

seeds=""
first=""
for s in ${KVD_SEEDS:-}; do
    [ -z "$first" ] && first="$s"
    is_me "$s" || seeds="$seeds --seed $s"
done
if [ -n "$first" ] && is_me "$first"; then
    seeds=""
fi

id=""
if [ -n "${KVD_ID:-}" ] && [ ! -e "$data/node-identity.json" ]; then
    id="$KVD_ID"
    if [ "${KVD_ID_SUFFIX:-}" = "random" ]; then
        id="$id-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    fi
fi

# shellcheck disable=SC2086 # $seeds holds separate words on purpose
exec kvd --listen "$KVD_LISTEN" --data-dir "$data" --www-dir "$www" --sdk-dir "$sdk" \
    ${id:+--id "$id"} $seeds "$@"
