#!/usr/bin/env bash
# The end-to-end demo on one machine: a loopback btrfs pool, a project with files, snapshots,
# locks, retention, and the host's status. Everything is made under a temp dir and removed at the
# end (pass --keep to leave it running and explore).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1
if [ "$(id -u)" -ne 0 ]; then echo "demo: run as root (it mounts a loopback btrfs pool)" >&2; exit 5; fi

DEMO="$(mktemp -d /var/tmp/cocalc-demo-XXXXXX)"
export COCALC_CTL_CONFIG="$DEMO/config.yaml"
cat > "$COCALC_CTL_CONFIG" <<YAML
btrfs_root: $DEMO/hostA/pool
data_dir: $DEMO/hostA/data
snapshot:
  keep_frequent: 0
  keep_daily: 2
  keep_weekly: 1
  keep_monthly: 0
backup:
  repo: $DEMO/restic-repo
  password_file: $DEMO/secrets/restic-password
YAML
mkdir -m 700 "$DEMO/secrets"
( umask 077; echo "demo repository password" > "$DEMO/secrets/restic-password" )
CLI="$REPO/bin/cocalc-ctl"
P=1b4e28ba-2fa1-11d2-883f-0016d3cca427
declare -a STEPS TIMES

cleanup() {
  if [ "$KEEP" -eq 1 ]; then
    echo
    echo "left running: export COCALC_CTL_CONFIG=$COCALC_CTL_CONFIG; $CLI project show $P"
    echo "tear down with: $CLI host teardown --delete-image && rm -rf $DEMO"
    return
  fi
  "$CLI" -q host teardown --delete-image >/dev/null 2>&1 || umount "$DEMO/hostA/pool" 2>/dev/null || true
  rm -rf "$DEMO"
}
trap cleanup EXIT

step() {
  local title="$1"; shift
  printf '\n\033[1m== %s\033[0m\n$ cocalc-ctl %s\n' "$title" "$*"
  local t0 t1
  t0=$(date +%s.%N)
  "$CLI" "$@"
  t1=$(date +%s.%N)
  STEPS+=("$title")
  TIMES+=("$(printf '%.2f' "$(echo "$t1 - $t0" | bc 2>/dev/null || python3 -c "print($t1-$t0)")")")
}

step "create a 2 GiB loopback btrfs pool" host init --loopback 2G
step "create a project" project create "$P" --quota 500M
mkdir -p "$DEMO/hostA/pool/project-$P/notebooks"
for i in $(seq 1 50); do echo "cell $i" > "$DEMO/hostA/pool/project-$P/notebooks/nb$i.ipynb"; done
head -c 20M /dev/urandom > "$DEMO/hostA/pool/project-$P/data.bin"
step "snapshot it (old, timestamp-named, as a timer would have)" snapshot create "$P" 2026-01-01T00:00:00Z
step "another old snapshot" snapshot create "$P" 2026-01-02T00:00:00Z
step "a named snapshot" snapshot create "$P" before-upgrade
step "lock the oldest one" snapshot lock "$P" 2026-01-01T00:00:00Z --reason "demo hold"
echo "more work" > "$DEMO/hostA/pool/project-$P/notebooks/new.ipynb"
step "timer run: snapshot (the project changed) and prune with configured counts" snapshot auto
step "timer run again: nothing changed, no new snapshot" snapshot auto
step "list snapshots" snapshot list "$P"
step "what prune would do with --keep-daily 1 (dry run)" --dry-run snapshot prune "$P" --keep-daily 1
step "project details" project show "$P"
step "host status" host status
step "create the backup repository (idempotent)" backup init
step "back the project up from a temporary read-only snapshot" backup create "$P"
step "its backups in the repository" backup list "$P"
echo "an accident" > "$DEMO/hostA/pool/project-$P/notebooks/nb1.ipynb"
rm -f "$DEMO/hostA/pool/project-$P/notebooks/nb2.ipynb"
step "restore one path into the live project" restore "$P" latest --path notebooks/nb1.ipynb
step "full restore: staging subvolume, verify, rename swap (snapshots kept)" restore "$P" latest
ls "$DEMO/hostA/pool/project-$P/notebooks/nb2.ipynb" >/dev/null
step "backup jobs and the age of each project's last backup" backup status
step "timer run: the restore changed the project, so it is due" backup due
step "timer run again: nothing changed since the last backup" backup due

printf '\n\033[1m== summary\033[0m\n'
printf '%-75s %8s\n' "step" "seconds"
for i in "${!STEPS[@]}"; do printf '%-75s %8s\n' "${STEPS[$i]}" "${TIMES[$i]}"; done
echo
echo "demo: ok"
