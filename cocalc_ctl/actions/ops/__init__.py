"""`timers`, `doctor` and `metrics`: running the host unattended and seeing how it is.

- `timers`: `timers install|list|remove|run` (systemd units and crontab lines from one table, `JOBS`).
- `doctor`: `doctor` (checks of tools, config, secrets, units, the pool).
- `metrics`: `metrics` (Prometheus text / JSON).
- `host_records`: pruning old host records at the end of the timers' runs.
"""
