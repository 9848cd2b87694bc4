"""nft command lines for the table that guards project ports, and the ruleset text it loads.

No policy here: which ports, MAC addresses and uids come from the caller. One table per address
family (`inet cocalc_ctl` for loopback ports, `bridge cocalc_ctl` for container-to-container frames)
holds named sets; starting and stopping a project only adds and deletes set elements.
"""

from __future__ import annotations

TABLE = "cocalc_ctl"


def nft(*args: str) -> list[str]:
    return ["nft", *args]


def list_table(family: str) -> list[str]:
    return nft("list", "table", family, TABLE)


def load() -> list[str]:
    """`nft -f -`: the ruleset text comes on stdin (one atomic transaction)."""
    return nft("-f", "-")


def ruleset(allowed_uids: list[int]) -> str:
    """The two tables. Connections to a guarded loopback port are refused unless the connecting
    socket belongs to an allowed uid (matched before the DNAT that podman's port mapping does, at
    priority -150), and bridged frames from or to a project container's MAC never pass between
    two ports of the bridge (each project reaches only the host and the outside)."""
    uids = ", ".join(str(u) for u in sorted(set(allowed_uids))) or "0"
    return f"""table inet {TABLE} {{
  set project_ports {{ type inet_service; }}
  set port_users {{ type uid; elements = {{ {uids} }} }}
  chain output {{
    type filter hook output priority -150; policy accept;
    ip daddr 127.0.0.0/8 tcp dport @project_ports meta skuid != @port_users reject with tcp reset
  }}
}}
table bridge {TABLE} {{
  set project_macs {{ type ether_addr; }}
  chain forward {{
    type filter hook forward priority -200; policy accept;
    ether saddr @project_macs drop
    ether daddr @project_macs drop
  }}
}}
"""


def add_uids(uids: list[int]) -> str:
    return f"add element inet {TABLE} port_users {{ {', '.join(str(u) for u in uids)} }}\n"


def elements(verb: str, ports: list[int], mac: str | None) -> str:
    """`add` or `delete` a project's ports and MAC, as nft script lines."""
    out = ""
    if ports:
        out += f"{verb} element inet {TABLE} project_ports {{ {', '.join(str(p) for p in ports)} }}\n"
    if mac:
        out += f"{verb} element bridge {TABLE} project_macs {{ {mac} }}\n"
    return out
