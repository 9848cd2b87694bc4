"""`backup` and `restore`: backups of projects to a restic/rustic repository, and restoring them.

- `repository`: which engine, repository and password; `backup init|list`.
- `jobs`: `backup create|status|due` (the job rows, heartbeats, the temporary snapshot, stale jobs).
- `prune`: `backup prune` (engine forget + prune).
- `restore` (+ `progress`, the restore's progress reports): `restore`, full (through staging) or a path.
- `common`: what they share: reserved names inside a backup, the per-project lock, removing a tree.
"""
