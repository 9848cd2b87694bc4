"""Isolation's pure parts: the id shift, range allocation, capability and port-user settings, the
podman arguments, the nft ruleset, and the ACL encoding (on a real tmpfs/ext4 file when possible)."""

from __future__ import annotations

import os
import subprocess

import pytest

from cocalc_ctl.actions.project import isolation
from cocalc_ctl.config import load as load_config
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.tools import idmap, nft, podman

R = isolation.IdRange(1 << 20)


def cfg(tmp_path, **values):
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "btrfs_root": str(tmp_path / "pool"),
                                    **values}))
    return load_config(str(path), env={})


@pytest.mark.parametrize("old, new", [
    (0, R.base),  # host root of a tree from before isolation -> the container's root
    (1000, R.base + 1000),  # container user 1000, whichever range it came from
    ((1 << 20) + 7 * 65536 + 1000, R.base + 1000),  # another host's range
    (R.base + 5, R.base + 5),  # already ours: unchanged (idempotent, hard links)
    (4_000_123, R.base + 4_000_123 % 65536),  # any foreign id stays inside our range
    (2**32 - 2, R.base + (2**32 - 2) % 65536),
])
def test_shift_maps_every_id_into_the_range_by_its_offset(old, new):
    assert isolation.shifted(old, R) == new
    assert R.contains(isolation.shifted(old, R))


def test_ranges_are_aligned_distinct_stable_and_freed_by_release(tmp_path):
    c = cfg(tmp_path)
    a, b = isolation.ensure_range(c, "a"), isolation.ensure_range(c, "b")
    assert (a.base, b.base) == (1 << 20, (1 << 20) + 65536)
    assert isolation.ensure_range(c, "a") == a
    from cocalc_ctl.state import host_db

    with host_db.connect(c.data_dir) as conn:
        isolation.release(conn, "a")
    assert isolation.ensure_range(c, "c").base == a.base  # reused only after the project is gone
    assert isolation.ensure_range(c, "b") == b


def test_ranges_skip_subordinate_ids_and_known_users(tmp_path, monkeypatch):
    """A user whose /etc/subuid (or subgid) entry, or own uid, falls into a project's range could act as
    that project's ids (newuidmap): such ranges are never handed out."""
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    # Debian's useradd hands out 100000 + n*65536: the 15th user's range straddles 1 << 20
    subuid.write_text("alice:100000:65536\n#x\nmallory:1017504:65536\nbroken:line\n")
    subgid.write_text(f"mallory:{(1 << 20) + 65536 + 5}:1\n")
    monkeypatch.setattr(isolation, "SUBID_FILES", (str(subuid), str(subgid)))
    c = cfg(tmp_path)
    assert isolation.ensure_range(c, "a").base == (1 << 20) + 2 * 65536
    import pwd

    real = pwd.getpwall()
    fake = real + [pwd.struct_passwd(("ldapuser", "x", (1 << 20) + 3 * 65536 + 42, 100, "", "/", "/bin/sh"))]
    monkeypatch.setattr(isolation.pwd, "getpwall", lambda: fake)
    assert isolation.ensure_range(c, "b").base == (1 << 20) + 4 * 65536
    assert isolation.ensure_range(c, "a").base == (1 << 20) + 2 * 65536, "an allocated range stays"


def test_uid_base_must_be_aligned(tmp_path):
    with pytest.raises(InvalidInput, match="multiple of 65536"):
        isolation.ensure_range(cfg(tmp_path, **{"isolation.uid_base": 100000}), "a")


def test_capabilities_refuse_all_and_sys_admin(tmp_path):
    assert isolation.capabilities(cfg(tmp_path, **{"isolation.capabilities": "chown, CAP_SETUID"})) == [
        "CHOWN", "SETUID"]
    for bad in ("ALL", "sys_admin", "CHOWN;reboot"):
        with pytest.raises(InvalidInput):
            isolation.capabilities(cfg(tmp_path, **{"isolation.capabilities": bad}))


def test_port_users_resolve_names_and_refuse_unknown_users(tmp_path):
    assert isolation.port_uids(cfg(tmp_path, **{"isolation.port_users": "root, 4242"})) == [0, 4242]
    with pytest.raises(InvalidInput, match="no user"):
        isolation.port_uids(cfg(tmp_path, **{"isolation.port_users": "no-such-user-here"}))


def test_podman_isolation_arguments():
    args = podman.isolation_args(R.base, 65536, ["CHOWN", "KILL"], "02:aa:bb:cc:dd:ee")
    assert args == ["--uidmap", f"0:{R.base}:65536", "--gidmap", f"0:{R.base}:65536", "--cap-drop=all",
                    "--cap-add=CHOWN", "--cap-add=KILL", "--security-opt", "no-new-privileges",
                    "--mac-address", "02:aa:bb:cc:dd:ee"]
    spec = podman.RunSpec(name="p", rootfs="/r", command=["sleep"], isolation_args=args)
    argv = podman.run(podman.Storage(), spec)
    assert "--privileged" not in argv and argv.index("--cap-drop=all") < argv.index("--rootfs")


def test_mac_is_locally_administered_and_per_host_and_project(tmp_path):
    c = cfg(tmp_path)
    mac = isolation.mac_address(c, "a")
    assert mac.startswith("02:") and len(mac.split(":")) == 6
    assert mac != isolation.mac_address(c, "b") and mac == isolation.mac_address(c, "a")


def test_nft_ruleset_parses_and_matches_the_socket_uid():
    text = nft.ruleset([0, 33])
    assert "meta skuid != @port_users reject" in text and "priority -150" in text
    assert "add element inet cocalc_ctl port_users { 0, 33 }" in text
    # the host's own connections straight to a project container's address need an allowed uid too
    # a SYN passes only from an allowed uid's socket; one without a socket (forwarded) falls to the drop
    syn = "add rule bridge cocalc_ctl output ether daddr @project_macs meta l4proto tcp tcp flags & (syn | ack) == syn"
    assert f"{syn} meta skuid @port_users accept\n{syn} drop\n" in text
    # what the host routes into a bridge and is not a reply is marked, and dropped before a project MAC
    mark = f"meta mark & {nft.FORWARDED:#x} == {nft.FORWARDED:#x}"
    fwd, out = "add rule inet cocalc_ctl forward", "add rule bridge cocalc_ctl output"
    assert (f"{fwd} ct state established,related return\n"
            f"{fwd} meta oifkind \"bridge\" meta mark set meta mark | {nft.FORWARDED:#x}\n") in text
    assert (f"{out} {mark} ether daddr @project_macs drop\n"
            f"{out} {mark} meta mark set meta mark & {0xffffffff ^ nft.FORWARDED:#x}\n") in text
    assert text.index(f"output {mark} ether daddr") < text.index(f"{syn} meta skuid @port_users accept")
    assert "flush chain inet cocalc_ctl forward" in text
    assert ("add rule bridge cocalc_ctl output ether daddr @project_macs meta l4proto udp "
            "meta skuid != @port_users drop") in text
    assert "add element bridge cocalc_ctl port_users { 0, 33 }" in text
    # reloadable over itself: chains are flushed and refilled, sets only declared (elements kept)
    assert "flush chain inet cocalc_ctl output" in text and "flush chain bridge cocalc_ctl output" in text
    assert "flush set" not in text and "flush table" not in text
    assert nft.elements("add", [1, 2], "02:00:00:00:00:01") == (
        "add element inet cocalc_ctl project_ports { 1, 2 }\n"
        "add element bridge cocalc_ctl project_macs { 02:00:00:00:00:01 }\n")
    if os.geteuid() == 0 and os.path.exists("/usr/sbin/nft"):
        res = subprocess.run(["nft", "-c", "-f", "-"], input=text, text=True, capture_output=True)
        assert res.returncode == 0, res.stderr


def test_exec_acl_round_trip(tmp_path):
    d = tmp_path / "roots"
    d.mkdir()
    try:
        idmap.set_exec_acl(str(d), {R.base, R.base + 65536})
    except OSError:
        pytest.skip("no POSIX ACLs on this filesystem")
    assert idmap.exec_acl_users(str(d)) == {R.base, R.base + 65536}
    assert os.stat(d).st_mode & 0o777 == 0o710  # group bits show the mask (--x)
    idmap.set_exec_acl(str(d), set())
    assert idmap.exec_acl_users(str(d)) == set() and os.stat(d).st_mode & 0o777 == 0o700


def test_seccomp_profile_refuses_exactly_the_btrfs_subvolume_ioctl_block(tmp_path, monkeypatch):
    import json

    base = tmp_path / "default.json"
    base.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
        {"names": ["ioctl", "read"], "action": "SCMP_ACT_ALLOW", "args": []},
        {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW"}]}))
    monkeypatch.setattr(isolation, "SECCOMP_DEFAULTS", (str(tmp_path / "missing.json"), str(base)))
    c = cfg(tmp_path)
    path = isolation.seccomp_profile(c)
    prof = json.loads(open(path).read())
    assert oct(os.stat(path).st_mode & 0o777) == "0o644" and isolation.seccomp_profile(c) == path
    assert {"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": []} in prof["syscalls"]
    ioctl = [r for r in prof["syscalls"] if "ioctl" in r["names"]]
    assert ioctl and all(r["args"] and r["action"] == "SCMP_ACT_ALLOW" for r in ioctl)

    def allowed(request: int) -> bool:  # what seccomp does with the rules: any matching allow
        return any(all(request & a["value"] == a["valueTwo"] for a in r["args"]) for r in ioctl)

    for request in (0x5000940E, 0x50009401, 0x50009417, 0x50009418, 0x5000940F, 0x500094FF,
                    (1 << 32) | 0x5000940E, (0xFFFF << 48) | 0x50009418):  # upper bits: the kernel drops them
        assert not allowed(request), hex(request)
    for request in (0x5401, 0x541B, 0xC0109414, 0x40049409, 0x50009500, 0x500093FF, 0x5100940E, 0):
        assert allowed(request), hex(request)
    base.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}))
    with pytest.raises(Exception, match="does not refuse by default"):
        isolation.seccomp_profile(c)
