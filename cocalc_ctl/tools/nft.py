"""nft command lines for the table that guards project ports, and the ruleset text it loads.

No policy here: which ports, MAC addresses and uids come from the caller. One table per address
family (`inet cocalc_ctl` for loopback ports, `bridge cocalc_ctl` for container-to-container frames)
holds named sets; starting and stopping a project only adds and deletes set elements.
"""

from __future__ import annotations

TABLE = "cocalc_ctl"
# the packet mark bit that carries "routed by the host, not a reply" from the inet forward hook to the
# bridge output hook (where the container's MAC is known but conntrack is not); cleared there
FORWARDED = 0x10000000


def nft(*args: str) -> list[str]:
    return ["nft", *args]


def list_table(family: str) -> list[str]:
    return nft("list", "table", family, TABLE)


def load() -> list[str]:
    """`nft -f -`: the ruleset text comes on stdin (one atomic transaction)."""
    return nft("-f", "-")


def ruleset(allowed_uids: list[int]) -> str:
    """The two tables, loadable again over themselves (declarations are idempotent, the chains are
    flushed and refilled in the same transaction, set elements are kept), so a host whose tables an
    earlier version made gets the current rules at the next project start.

    - inet output: a connection to a guarded loopback port is reset unless the connecting socket
      belongs to an allowed uid (matched before the DNAT that podman's port mapping does, at
      priority -150).
    - inet forward: a packet the host routes out through a bridge that is not a reply (conntrack
      state new, invalid or untracked: a connection a machine on the host's network opens to a
      container's bridge address, or a SYN to a loopback port that the port mapping's DNAT sends on)
      gets the FORWARDED bit of its mark; bridge output drops such frames to a project container's MAC
      and clears the bit on any other frame. Replies to the containers' own connections (their
      traffic to the internet) are established and pass.
    - bridge output: the host's own TCP connections and UDP datagrams straight to a project
      container's address (its bridge IP, IPv4 or IPv6, any port) must come from an allowed uid too:
      a SYN to a project container's MAC passes only when an allowed uid's socket sent it (a SYN
      without a socket, i.e. forwarded, falls to the drop); a datagram from any other local socket is
      dropped (the bridge family has neither reject in output nor, without br_netfilter's conntrack,
      `ct state`; so a host UDP service running as another user cannot answer a project container).
    - bridge forward: frames from or to a project container's MAC never pass between two ports of
      the bridge (each project reaches only the host and the outside)."""
    uids = ", ".join(str(u) for u in sorted(set(allowed_uids))) or "0"
    return f"""table inet {TABLE} {{
  set project_ports {{ type inet_service; }}
  set port_users {{ type uid; }}
  chain output {{ type filter hook output priority -150; policy accept; }}
  chain forward {{ type filter hook forward priority 0; policy accept; }}
}}
flush chain inet {TABLE} output
flush chain inet {TABLE} forward
add element inet {TABLE} port_users {{ {uids} }}
add rule inet {TABLE} output ip daddr 127.0.0.0/8 tcp dport @project_ports meta skuid != @port_users reject with tcp reset
add rule inet {TABLE} forward ct state established,related return
add rule inet {TABLE} forward meta oifkind "bridge" meta mark set meta mark | {FORWARDED:#x}
table bridge {TABLE} {{
  set project_macs {{ type ether_addr; }}
  set port_users {{ type uid; }}
  chain forward {{ type filter hook forward priority -200; policy accept; }}
  chain output {{ type filter hook output priority -200; policy accept; }}
}}
flush chain bridge {TABLE} forward
flush chain bridge {TABLE} output
add element bridge {TABLE} port_users {{ {uids} }}
add rule bridge {TABLE} forward ether saddr @project_macs drop
add rule bridge {TABLE} forward ether daddr @project_macs drop
add rule bridge {TABLE} output meta mark & {FORWARDED:#x} == {FORWARDED:#x} ether daddr @project_macs drop
add rule bridge {TABLE} output meta mark & {FORWARDED:#x} == {FORWARDED:#x} meta mark set meta mark & {~FORWARDED & 0xffffffff:#x}
add rule bridge {TABLE} output ether daddr @project_macs meta l4proto tcp tcp flags & (syn | ack) == syn meta skuid @port_users accept
add rule bridge {TABLE} output ether daddr @project_macs meta l4proto tcp tcp flags & (syn | ack) == syn drop
add rule bridge {TABLE} output ether daddr @project_macs meta l4proto udp meta skuid != @port_users drop
"""


def elements(verb: str, ports: list[int], mac: str | None) -> str:
    """`add` or `delete` a project's ports and MAC, as nft script lines."""
    out = ""
    if ports:
        out += f"{verb} element inet {TABLE} project_ports {{ {', '.join(str(p) for p in ports)} }}\n"
    if mac:
        out += f"{verb} element bridge {TABLE} project_macs {{ {mac} }}\n"
    return out
