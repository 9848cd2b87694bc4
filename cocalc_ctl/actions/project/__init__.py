"""`project`, `rootfs` and `snapshot`: a project's subvolume, its snapshots, its root filesystem and container.

- `subvolume`: does a project exist here, which snapshots it has (what every other action asks first).
- `projects`: `project create|list|show|delete`.
- `snapshots` (+ `retention`, the pure keep/drop rules): `snapshot create|list|delete|prune|auto`.
- `rootfs` (image choice and cache), `overlay` (the merged root), `isolation` (what a project may make
  root do), `quota`, `containers` (`project start|stop|status`), `project_ssh` (the in-container sshd)
  and `session` (`project ssh`).
"""
