#!/bin/bash
# Exits 0 when the local kvd answers GET PATH (default /health; /ready is 200 only once the
# node is a full member, not joining or leaving) with 200. Plain bash (/dev/tcp), so the image
# needs no curl. kvd listens only on its own address: KVD_LISTEN, or this container's IP.
set -eu
addr="${KVD_LISTEN:-$(hostname -i | awk '{print $1}'):${KVD_PORT:-7070}}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
port="${addr##*:}"
exec 3<>"/dev/tcp/$host/$port"
path="${1:-/health}"
printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$addr" >&3
IFS= read -r -t 3 status <&3
case "$status" in
    "HTTP/1."?" 200"*) exit 0 ;;
    *) echo "kvd at $addr answered: $status" >&2; exit 1 ;;
esac
