"""`hub`: the hub's PostgreSQL and what it records about projects.

- `database`: `hub migrate`, `hub host-role` (the schema and the hosts' database roles).
- `placement`: `hub project add|set|show|list|rm` (which host holds a project, its rootfs image).
"""
