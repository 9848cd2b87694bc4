.PHONY: demo demo-rootfs

# Needs root and: podman runc skopeo busybox-static docker-registry btrfs-progs
demo: demo-rootfs

demo-rootfs:
	./examples/rootfs-demo.sh
