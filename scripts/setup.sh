#!/usr/bin/env bash
# Install what cocalc-ctl's demo and tests need on Debian 12, then a venv with the package (editable).
# Idempotent: apt runs only when a package is missing; pip only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3-venv btrfs-progs restic rclone openssh-server openssh-client rsync lz4 zstd bats
  podman runc uidmap skopeo catatonit busybox-static docker-registry util-linux mount kmod curl
  systemd man-db groff-base zsh fish chromium nftables acl nginx-light
  pgbouncer
  dropbear-bin patchelf openssh-sftp-server debootstrap
)
# PostgreSQL server binaries (initdb, pg_ctl) for the throwaway hub database
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  PACKAGES+=(postgresql)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root or install them)" >&2
    exit 5
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps package scripts from starting services (postgresql, nginx, registry) we start ourselves
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe btrfs 2>/dev/null || true
modprobe overlay 2>/dev/null || true
mkdir -p /run/sshd 2>/dev/null || true

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
echo "setup: ok"
