"""The receiver's grammar, the peer spec and the exact outbound command lines (no root needed)."""

from __future__ import annotations

import pytest

from cocalc_ctl import config as config_mod
from cocalc_ctl.actions.move import recv, transport
from cocalc_ctl.errors import InvalidInput
from cocalc_ctl.tools import compress, rsync

PID = "0b1c8a36-7f0e-4d2a-9a57-3c2b1e0f9d11"
U = "5d8e2c1a-1111-4a2b-8c3d-9e8f7a6b5c4d"


@pytest.mark.parametrize("command,verb,args", [
    (f"list {PID}", "list", []),
    (f"list project-{PID}", "list", []),
    (f"receive {PID} s1 snapshot none {U}", "receive", ["s1", "snapshot", "none", U]),
    (f"receive {PID} 2026-11-27T10:43:45Z move zstd {U} {U}", "receive",
     ["2026-11-27T10:43:45Z", "move", "zstd", U, U]),
    (f"receive-file {PID} move-1 0001-s1.btrfs.lz4", "receive-file", ["move-1", "0001-s1.btrfs.lz4"]),
    (f"persist {PID}", "persist", []),
    (f"abort {PID}", "abort", []),
    (f"rsync --server -tre.iLsfxCIvu --bwlimit=100 --partial . _streams/{PID}/move-1/", "rsync",
     ["-tre.iLsfxCIvu", "--bwlimit=100", "--partial", "move-1"]),
])
def test_grammar_accepts_its_own_commands(command, verb, args):
    req = recv.parse(command)
    assert (req.verb, req.project_id, req.args) == (verb, PID, args)


@pytest.mark.parametrize("command", [
    None, "", " list " + PID, f"list  {PID}", f"list {PID} ", f"LIST {PID}", f"list {PID};id", f"list {PID}|id",
    f"list {PID}&", f"list {PID}>x", "list $HOME", "list `id`", f"list {PID}\n", f"list {PID}\x00",
    f"list {PID[:-1]}", f"list {PID.upper()}", "list ../../etc", f"list {PID}/..", f"list {PID} {PID}",
    f"receive {PID} ../x snapshot none {U}", f"receive {PID} .x snapshot none {U}", f"receive {PID} a/b snapshot none {U}",
    f"receive {PID} s1.lock snapshot none {U}", f"receive {PID} s1 snapshot bzip2 {U}",
    f"receive {PID} s1 snapshot none", f"receive {PID} s1 snapshot none {U} {U} {U}",
    f"receive-file {PID} m1 ../../etc/passwd", f"receive-file {PID} m1 0001-s1.tar",
    f"receive-file {PID} m1 1-s1.btrfs", f"receive-file {PID} .. 0001-s1.btrfs",
    "rsync --server --sender -vlogDtpre.iLsfxCIvu . /", f"rsync --server -tr . _streams/{PID}/m/x/",
    f"rsync --server -tr --delete . _streams/{PID}/m/", f"rsync --server -tr . /_streams/{PID}/m/",
    f"rsync --server -tr . _streams/{PID}/../", f"rsync --server -tr= . _streams/{PID}/m/",
    "rsync --daemon", f"rsync --server -s . _streams/{PID}/m/", f"rsync --server -tsr . _streams/{PID}/m/", "scp -t /", "sh -c id", "x" * 2000,
])
def test_grammar_refuses_everything_else(command):
    with pytest.raises(recv.Refused):
        recv.parse(command)


def test_peer_spec_is_validated():
    assert transport.parse_peer(f"btrfs-{U}@10.0.0.5:2222") == transport.Peer(f"btrfs-{U}", "10.0.0.5", 2222)
    assert transport.parse_peer("root@host.example").port == 22
    for bad in ["btrfs-xyz@h:22", "a@b@c", "root@h:99999", "root@-h", "root@h;id:22", "@h", f"btrfs-{U}@"]:
        with pytest.raises(InvalidInput):
            transport.parse_peer(bad)


def test_outbound_ssh_is_pinned_and_uses_only_the_host_key(tmp_path):
    import cocalc_ctl.proc as proc

    cfg = config_mod.load(str(_cfg(tmp_path)), env={})
    proc.DRY_RUN = True
    try:
        argv = transport.ssh_command(cfg, transport.parse_peer(f"btrfs-{U}@127.0.0.3:2222"), ["list", PID])
    finally:
        proc.DRY_RUN = False
    assert argv == ["ssh", "-p", "2222",
                    "-o", "UserKnownHostsFile=/srv/data/ssh/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
                    "-o", "StrictHostKeyChecking=yes", "-o", "UpdateHostKeys=no", "-o", "CheckHostIP=no",
                    "-o", "HashKnownHosts=no", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                    "-o", "IdentityFile=/srv/secrets/host-to-host/id_ed25519", "-o", "PasswordAuthentication=no",
                    "-o", "KbdInteractiveAuthentication=no", "-o", "BatchMode=yes", "-o", "ForwardAgent=no",
                    "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes", "-o", "ConnectTimeout=20",
                    "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-F", "/dev/null",
                    "-o", "LogLevel=ERROR", "-T", "-x", "-a", f"btrfs-{U}@127.0.0.3", f"list {PID}"]
    with pytest.raises(InvalidInput):
        transport.ssh_command(cfg, transport.parse_peer("root@h"), ["list", "a;b"])


def _cfg(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("data_dir: /srv/data\nsecrets_dir: /srv/secrets\nbtrfs_root: /srv/pool\n")
    return p


def test_rsync_push_is_partial_and_uses_our_ssh():
    argv = rsync.push_dir("/p/_streams/x/m1", "root@h:_streams/x/m1/", ["ssh", "-p", "22", "-o", "A=b c"],
                          bwlimit="100")
    assert argv == ["rsync", "-rt", "--partial", "--no-perms", "--no-owner", "--no-group", "--bwlimit=100",
                    "-e", "ssh -p 22 -o 'A=b c'", "/p/_streams/x/m1/", "root@h:_streams/x/m1/"]


def test_compressors_really_compress():
    assert compress.compressor("zstd") == ["zstd", "-q", "-c", "-T0", "-3"]
    assert compress.compressor("lz4") == ["lz4", "-q", "-c"]
    assert compress.compressor("none") is None
    assert compress.decompressor("zstd") == ["zstd", "-q", "-d", "-c"]
    assert compress.codec_of_file("0001-a.btrfs.zst") == "zstd"


TK = "eyJ2IjoxfQ.c2ln-_x"  # any ticket-shaped word: host-step checks its shape, the verb checks the signature
T = ["--ticket", TK]


def test_host_step_accepts_the_workers_steps_only():
    from cocalc_ctl.actions.move import host_step

    to = "btrfs-" + U + "@10.1.2.3:2222"
    t = f" --ticket {TK}"
    assert host_step.parse(f"project show {PID}") == ["project", "show", PID]
    assert host_step.parse(f"move finalize {PID}{t}") == ["move", "finalize", PID, *T]
    assert host_step.parse(f"move finalize {PID} --quota 80740352{t}") \
        == ["move", "finalize", PID, "--quota", "80740352", *T]
    assert host_step.parse(f"move cleanup {PID} --force{t}") == ["move", "cleanup", PID, "--force", *T]
    assert host_step.parse(f"move abort {PID}{t}") == ["move", "abort", PID, *T]
    assert host_step.parse(f"move release {PID}{t}") == ["move", "release", PID, *T]
    assert host_step.parse(f"move send {PID} --to {to} --mode staged --compress lz4 --snapshot move-1 --bwlimit 10M{t}") \
        == ["move", "send", PID, "--to", to, "--mode", "staged", "--compress", "lz4", "--snapshot", "move-1",
            "--bwlimit", "10M", *T]
    for bad in [f"project delete {PID}", f"move cleanup {PID}", f"move send {PID} --to {to}",
                f"move send {PID} --to {to} --snapshot s --config /etc/x", f"move send {PID} --to x;id --snapshot s",
                f"move send {PID} --to {to} --snapshot s --snapshot t", f"move recv --from {U}", "host teardown",
                f"move finalize ../{PID}", f"move abort {PID} {PID}", f"move abort {PID} --quota 5",
                f"move finalize {PID} --quota 10G", f"move finalize {PID} --quota 0", f"move finalize {PID} --quota -5",
                f"move finalize {PID} --quota 1 --quota 2", "move finalize --quota 5",
                # release takes the snapshot from its ticket only: no name, no pattern from the line
                f"move release {PID} --snapshot move-1", f"move release {PID} move-*", f"move release {PID} --force",
                f"move release ../{PID}", f"move release {PID} --quota 5"]:
        for cmd in (bad, bad + t):
            with pytest.raises(recv.Refused):
                host_step.parse(cmd)
    # every step that changes state needs a ticket; a read takes none; a ticket is one safe word
    for bad in [f"move finalize {PID}", f"move cleanup {PID} --force", f"move abort {PID}", f"move release {PID}",
                f"move send {PID} --to {to} --mode pipe --compress none --snapshot move-1",
                f"move send {PID} --mode backup --snapshot move-1", f"project show {PID}{t}",
                f"move abort {PID} --ticket a/b", f"move abort {PID} --ticket {'a' * 1025}",
                f"move abort {PID} --ticket", f"move abort {PID} --ticket {TK} --ticket {TK}", "", None]:
        with pytest.raises(recv.Refused):
            host_step.parse(bad)


def test_host_step_accepts_backup_mode_send_and_finalize_only_in_their_own_shape():
    from cocalc_ctl.actions.move import host_step

    bid = "0123456789abcdef" * 4
    t = f" --ticket {TK}"
    assert host_step.parse(f"move send {PID} --mode backup --snapshot move-1{t}") \
        == ["move", "send", PID, "--mode", "backup", "--snapshot", "move-1", *T]
    assert host_step.parse(f"move finalize {PID} --from-backup {bid}{t}") \
        == ["move", "finalize", PID, "--from-backup", bid, *T]
    assert host_step.parse(f"move finalize {PID} --from-backup {bid} --quota 1048576{t}") \
        == ["move", "finalize", PID, "--from-backup", bid, "--quota", "1048576", *T]
    to = "btrfs-" + U + "@10.1.2.3:2222"
    for bad in [f"move send {PID} --mode backup", f"move send {PID} --mode backup --snapshot s --to {to}",
                f"move send {PID} --mode backup --snapshot s --compress zstd",
                f"move send {PID} --mode tape --snapshot s --to {to}",
                f"move finalize {PID} --from-backup latest", f"move finalize {PID} --from-backup {bid.upper()}",
                f"move finalize {PID} --from-backup 0123", f"move finalize {PID} --from-backup {bid} x",
                f"move finalize {PID} --restore {bid}", f"move finalize {PID} --from-backup ../{bid}"]:
        with pytest.raises(recv.Refused):
            host_step.parse(bad + t)


def test_move_mode_backup_is_a_valid_default(tmp_path):
    from cocalc_ctl.actions.move import hub

    assert "backup" in hub.MODES
    cfg = config_mod.load(str(_cfg(tmp_path)), env={"COCALC_CTL_MOVE_MODE": "backup"})
    assert cfg["move.mode"] == "backup"


def test_receiver_grammar_carries_the_ticket_first():
    req = recv.parse(f"ticket {TK} list {PID}")
    assert (req.verb, req.project_id, req.ticket) == ("list", PID, TK)
    req = recv.parse(f"ticket {TK} rsync --server -tre.iLsfxCIvu --partial . _streams/{PID}/move-1/")
    assert (req.verb, req.project_id, req.args[-1], req.ticket) == ("rsync", PID, "move-1", TK)
    assert recv.parse(f"list {PID}").ticket is None  # parsed, and refused later by serve(): no ticket
    for bad in [f"ticket {TK}", f"ticket list {PID}", f"ticket {TK} ticket {TK} list {PID}",
                f"list {PID} ticket {TK}", f"ticket {TK};id list {PID}"]:
        with pytest.raises(recv.Refused):
            recv.parse(bad)
