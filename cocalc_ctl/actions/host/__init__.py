"""`host` and what every other capability asks about this host: its id, its btrfs pool.

- `identity`: the host id (config, else the one `host init` stored).
- `pool`: `require_pool`, the precondition every pool-touching action checks first.
- `setup`: `host init|status|teardown`.
"""
