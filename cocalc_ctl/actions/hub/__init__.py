"""`hub`: the hub's PostgreSQL and what it records about projects and who may reach them.

- `database`: `hub migrate`, `hub host-role` (the schema and the hosts' database roles).
- `placement`: `hub project add|set|show|list|rm` (which host holds a project, its rootfs image).
- `access`: `hub account …`, `hub project grant|revoke|users`, `hub token …` (proxy access control).
"""
