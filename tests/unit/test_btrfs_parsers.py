from cocalc_ctl.tools import btrfs

SHOW = """p/.snapshots/s1
\tName: \t\t\ts1
\tUUID: \t\t\tab82b59a-6120-4c4b-a4ab-e76a48eaeb19
\tParent UUID: \t\t9d72da42-b061-ad4a-aafa-0db1d16a47b5
\tReceived UUID: \t\t-
\tCreation time: \t\t2026-11-27 10:44:48 +0000
\tSubvolume ID: \t\t258
\tGeneration: \t\t10
\tGen at creation: \t10
\tParent ID: \t\t257
\tTop level ID: \t\t257
\tFlags: \t\t\treadonly
\tSnapshot(s):
\tQuota group:\t\t0/258
\t  Limit referenced:\t-
"""

LIST = ("ID 258 gen 10 cgen 10 top level 257 otime 2026-11-27 10:44:48 parent_uuid 9d72da42-b061-ad4a-aafa-0db1d16a47b5"
        " received_uuid -                                    uuid ab82b59a-6120-4c4b-a4ab-e76a48eaeb19 path p/.snapshots/s 1\n"
        "ID 259 gen 12 cgen 11 top level 257 parent_uuid - received_uuid 11111111-2222-3333-4444-555555555555"
        " uuid ab82b59a-6120-4c4b-a4ab-e76a48eaeb20 path p/.snapshots/s2\n")

QGROUP_NEW = """Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/256            16384        16384      1073741824           none   p
"""
QGROUP_OLD = """qgroupid         rfer         excl     max_rfer     max_excl
--------         ----         ----     --------     --------
0/5             16384        16384         none         none
0/256           81920        65536   1073741824         none
"""


def test_parse_subvolume_show():
    info = btrfs.parse_subvolume_show(SHOW)
    assert info.name == "s1" and info.subvolume_id == 258 and info.generation == 10
    assert info.readonly and info.received_uuid is None and info.parent_uuid.startswith("9d72")


def test_parse_subvolume_list_with_and_without_otime_and_spaces_in_path():
    subs = btrfs.parse_subvolume_list(LIST)
    assert [s.name for s in subs] == ["s 1", "s2"]
    assert subs[0].cgen == 10 and subs[0].received_uuid is None
    assert subs[1].received_uuid == "11111111-2222-3333-4444-555555555555" and subs[1].parent_uuid is None


def test_parse_qgroup_show_both_header_styles():
    new = btrfs.parse_qgroup_show(QGROUP_NEW)["0/256"]
    assert (new.referenced, new.exclusive, new.max_referenced) == (16384, 16384, 1073741824)
    old = btrfs.parse_qgroup_show(QGROUP_OLD)["0/256"]
    assert (old.referenced, old.exclusive, old.max_referenced) == (81920, 65536, 1073741824)


def test_parse_filesystem_usage():
    text = "Overall:\n    Device size:\t\t        1073741824\n    Used:\t\t\t            425984\n" \
           "    Free (estimated):\t\t         949616640\t(min: 479002624)\n"
    u = btrfs.parse_filesystem_usage(text)
    assert (u.device_size, u.used, u.free_estimated) == (1073741824, 425984, 949616640)
