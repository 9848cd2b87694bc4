"""`keys ensure/show/rotate`: real files, real modes, never overwriting, no private material shown."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from tests.support.keys import KeyHost

KEYFILES = ["host-to-host/id_ed25519", "sshpiperd/host_key", "sshpiper/upstream_key", "sshpiper/relay_key"]


@pytest.fixture
def kh(tmp_path) -> KeyHost:
    return KeyHost(tmp_path / "a", extra={"ssh_server": "127.0.0.3:22"})


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def private_material(h: KeyHost) -> list[str]:
    """Strings that must never appear in output: every private key body line and the token."""
    out = []
    for rel in KEYFILES:
        for p in (h.secrets / rel, h.secrets / (rel + ".previous")):
            if p.exists():
                out += [ln for ln in p.read_text().splitlines() if ln and not ln.startswith("-----")]
    out.append((h.secrets / "sshpiper" / "token").read_text().strip())
    return out


def test_ensure_creates_openssh_keys_with_safe_modes(kh):
    kh.cli("keys", "ensure")
    assert mode(kh.secrets) == 0o700
    for rel in KEYFILES:
        key = kh.secrets / rel
        assert mode(key.parent) == 0o700
        assert mode(key) == 0o600
        assert mode(str(key) + ".pub") == 0o644
        assert key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        # OpenSSH itself reads the key and derives the same public half
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, text=True, check=True)
        assert derived.stdout.split()[:2] == kh.pub(rel).split()[:2]
    assert mode(kh.secrets / "sshpiper" / "token") == 0o600
    row = kh.db().execute("SELECT * FROM project_hosts WHERE is_self=1").fetchone()
    assert row["host_id"] == kh.host_id
    assert row["host_to_host_public_key"].split()[:2] == kh.pub(KEYFILES[0]).split()[:2]
    assert row["sshpiperd_public_key"].split()[:2] == kh.pub(KEYFILES[1]).split()[:2]


def test_ensure_is_idempotent_and_never_rewrites(kh):
    kh.cli("keys", "ensure")
    before = {rel: ((kh.secrets / rel).read_bytes(), os.stat(kh.secrets / rel).st_mtime_ns) for rel in KEYFILES}
    out = kh.cli("keys", "ensure").stdout
    assert "nothing to do" in out
    after = {rel: ((kh.secrets / rel).read_bytes(), os.stat(kh.secrets / rel).st_mtime_ns) for rel in KEYFILES}
    assert before == after


def test_missing_pub_is_derived_from_the_private_key(kh):
    kh.cli("keys", "ensure")
    pub = kh.secrets / "host-to-host" / "id_ed25519.pub"
    old = pub.read_text().split()[:2]
    pub.unlink()
    kh.cli("keys", "ensure")
    assert pub.read_text().split()[:2] == old


def test_mismatched_pub_is_an_error_not_a_rewrite(kh, tmp_path):
    kh.cli("keys", "ensure")
    other = KeyHost(tmp_path / "b")
    other.cli("keys", "ensure")
    pub = kh.secrets / "sshpiperd" / "host_key.pub"
    pub.write_text((other.secrets / "sshpiperd" / "host_key.pub").read_text())
    res = kh.cli("keys", "ensure", check=False)
    assert res.returncode == 5 and "does not match" in res.stderr


@pytest.mark.parametrize("target,fix", [("sshpiperd/host_key", "chmod 600"), ("sshpiperd", "chmod 700"),
                                        ("", "chmod 700")])
def test_wrong_mode_on_an_existing_secret_is_an_error_saying_how_to_fix(kh, target, fix):
    kh.cli("keys", "ensure")
    path = kh.secrets / target if target else kh.secrets
    key_before = (kh.secrets / "sshpiperd/host_key").read_bytes()
    os.chmod(path, 0o644 if path.is_file() else 0o755)
    res = kh.cli("keys", "ensure", check=False)
    assert res.returncode == 5
    assert fix in res.stderr and str(path) in res.stderr and "Traceback" not in res.stderr
    assert (kh.secrets / "sshpiperd/host_key").read_bytes() == key_before


def test_show_and_json_never_contain_private_keys_or_token(kh):
    kh.cli("keys", "ensure")
    kh.cli("keys", "rotate", "--which", "host")
    outputs = [kh.cli("keys", "show"), kh.cli("--json", "keys", "show"), kh.cli("--json", "keys", "ensure"),
               kh.cli("sshpiper", "config"), kh.cli("--json", "sshpiper", "config"),
               kh.cli("--json", "keys", "rotate", "--which", "host", "--finish")]
    secrets = private_material(kh)
    for res in outputs:
        for s in secrets:
            assert s not in res.stdout and s not in res.stderr
    shown = json.loads(outputs[1].stdout)
    assert {k["which"] for k in shown} == {"host", "sshpiperd", "upstream", "relay"}
    assert all(k["fingerprint"].startswith("SHA256:") for k in shown)


def test_rotate_keeps_previous_until_finish(kh):
    kh.cli("keys", "ensure")
    key = kh.secrets / "host-to-host" / "id_ed25519"
    old_private, old_pub = key.read_bytes(), kh.pub("host-to-host/id_ed25519")
    r = kh.json("keys", "rotate", "--which", "host")
    assert r["action"] == "rotated"
    prev = kh.secrets / "host-to-host" / "id_ed25519.previous"
    assert prev.read_bytes() == old_private and mode(prev) == 0o600
    assert key.read_bytes() != old_private and mode(key) == 0o600
    row = kh.db().execute("SELECT host_to_host_public_key FROM project_hosts WHERE is_self=1").fetchone()[0]
    lines = row.splitlines()
    assert len(lines) == 2 and lines[1].split()[:2] == old_pub.split()[:2]
    again = kh.cli("keys", "rotate", "--which", "host", check=False)
    assert again.returncode == 5 and "--finish" in again.stderr
    kh.cli("keys", "rotate", "--which", "host", "--finish")
    assert not prev.exists() and not (prev.parent / "id_ed25519.previous.pub").exists()
    row = kh.db().execute("SELECT host_to_host_public_key FROM project_hosts WHERE is_self=1").fetchone()[0]
    assert len(row.splitlines()) == 1


def test_dry_run_creates_nothing(kh):
    res = kh.cli("--dry-run", "keys", "ensure")
    assert "generate an ed25519 key" in res.stdout
    assert not (kh.secrets / "host-to-host" / "id_ed25519").exists()


def test_ensure_needs_a_host_id(tmp_path):
    h = KeyHost(tmp_path / "c", host_id="")
    h.write_config(host_id=None)
    res = h.cli("keys", "ensure", check=False)
    assert res.returncode == 5 and "host init" in res.stderr


def test_concurrent_ensure_makes_one_consistent_set(kh):
    import subprocess as sp

    from tests.support.keys import CLI, REPO

    procs = [sp.Popen([*CLI, "keys", "ensure"], env=kh.env, cwd=str(REPO), stdout=sp.PIPE, stderr=sp.PIPE, text=True)
             for _ in range(4)]
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    assert sum(out.count("created ") for out, _, _ in results) == 5  # four keys and the token, made once
    for rel in KEYFILES:
        derived = subprocess.run(["ssh-keygen", "-y", "-f", str(kh.secrets / rel)], capture_output=True, text=True,
                                 check=True).stdout.split()[:2]
        assert derived == kh.pub(rel).split()[:2]
