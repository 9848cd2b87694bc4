#!/bin/bash
# rootfs demo: build a tiny busybox image, serve it from a local registry, pull it into the cache,
# and run a project on an overlay root backed by the project's own subvolume. Needs root and the
# Debian packages podman runc busybox-static docker-registry btrfs-progs curl.
# Everything it makes lives in one temp dir and is removed at the end, even on failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
CTL="$HERE/bin/cocalc-ctl"
DEMO=$(mktemp -d /var/tmp/cocalc-rootfs-demo-XXXXXX)
chmod 711 "$DEMO"  # others may pass through, not list: a project's mapped root must reach its root filesystem
echo "demo directory $DEMO"
REG_PID=""
PROJECT=""

cleanup() {
    set +e
    [ -n "$PROJECT" ] && "$CTL" project stop "$PROJECT" >/dev/null 2>&1
    podman --root "$DEMO/podman/root" --runroot "$DEMO/podman/run" --tmpdir "$DEMO/podman/tmp" \
        rm --all --force --time 0 >/dev/null 2>&1
    [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
    "$CTL" host teardown --delete-image >/dev/null 2>&1
    grep -o " $DEMO[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$DEMO"
}
trap cleanup EXIT

show() { echo; echo "\$ cocalc-ctl $*"; "$CTL" "$@"; }

cat > "$DEMO/config.yaml" <<EOF
btrfs_root: $DEMO/pool
data_dir: $DEMO/data
podman:
  root: $DEMO/podman/root
  runroot: $DEMO/podman/run
  tmpdir: $DEMO/podman/tmp
  runtime: runc
  tls_verify: false
  ulimits: nofile=1024:1024,nproc=1024:1024
  memory: 256M
  pids_limit: 128
  command: /bin/sh -c 'echo "hello from \$COCALC_PROJECT_ID" > /home/user/index.html; exec /bin/httpd -f -p 8080 -h /home/user'
EOF
export COCALC_CTL_CONFIG="$DEMO/config.yaml"
"$CTL" host init --loopback 1G >/dev/null

# a busybox image, pushed to Debian's docker-registry on loopback
mkdir -p "$DEMO/tree/bin" "$DEMO/tree/etc" "$DEMO/tree/tmp" "$DEMO/tree/home/user"
cp /bin/busybox "$DEMO/tree/bin/busybox"
for a in sh ls cat echo httpd; do ln "$DEMO/tree/bin/busybox" "$DEMO/tree/bin/$a"; done
echo "demo image" > "$DEMO/tree/etc/image"
tar -C "$DEMO/tree" -cf "$DEMO/tree.tar" .
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$DEMO/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $DEMO/registry}}
http: {addr: 127.0.0.1:$PORT}
EOF
docker-registry serve "$DEMO/registry.yml" >"$DEMO/registry.log" 2>&1 &
REG_PID=$!
P=(podman --root "$DEMO/podman/root" --runroot "$DEMO/podman/run" --tmpdir "$DEMO/podman/tmp")
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
"${P[@]}" import -q "$DEMO/tree.tar" localhost/demo:1 >/dev/null
"${P[@]}" push -q --tls-verify=false localhost/demo:1 "docker://127.0.0.1:$PORT/demo/busybox:1"
"${P[@]}" rmi -f localhost/demo:1 >/dev/null
IMAGE="127.0.0.1:$PORT/demo/busybox:1"
# a host pulls only from the registries its config lists (docker.io and rootfs.registries)
export COCALC_CTL_ROOTFS_REGISTRIES="127.0.0.1:$PORT"

PROJECT=$(python3 -c 'import uuid; print(uuid.uuid4())')
"$CTL" project create "$PROJECT" >/dev/null
show rootfs resolve "$PROJECT" --image "$IMAGE"
show rootfs pull "$IMAGE"
show rootfs pull "$IMAGE"
show rootfs list
show project start "$PROJECT"
HTTP=$("$CTL" --json project status "$PROJECT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["http_port"])')
echo; echo "\$ curl http://127.0.0.1:$HTTP/index.html"; curl -fsS --retry 20 --retry-delay 1 --retry-all-errors "http://127.0.0.1:$HTTP/index.html"
ROOT="$DEMO/data/project-roots/$PROJECT"
echo; echo "\$ echo changed > $ROOT/etc/motd   # written in the merged root"
echo changed > "$ROOT/etc/motd"
echo "\$ ls <project>/.local/share/overlay/$IMAGE/upper/etc"
ls "$DEMO/pool/project-$PROJECT/.local/share/overlay/$IMAGE/upper/etc"
show project status "$PROJECT"
show project stop "$PROJECT"
show project status "$PROJECT"
show rootfs gc
echo; echo "demo: ok"
