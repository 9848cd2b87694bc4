#!/usr/bin/env bash
# The end-to-end demo on one machine (what `make demo` runs): a throwaway PostgreSQL hub, two loopback
# btrfs hosts with their own receiver sshd, keys, a project from a local busybox image, snapshots,
# start/stop, backup/restore, a move A -> B and a request through the proxy. Everything is removed
# at the end; pass --keep to leave it running and explore. The demo itself is scripts/demo.py.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then echo "demo: run as root (it mounts loopback btrfs pools and runs sshd)" >&2; exit 5; fi
PY=python3
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"
exec "$PY" "$REPO/scripts/demo.py" "$@"
