"""Image reference normalisation (SPEC §2): a pure function, checked against a table."""

from __future__ import annotations

import pytest

from cocalc_ctl import proc
from cocalc_ctl.actions.project import rootfs
from cocalc_ctl.actions.project.rootfs import normalize
from cocalc_ctl.errors import InvalidInput

DEFAULT = "docker.io/library/ubuntu:25.10"
DIGEST = "sha256:" + "0123456789abcdef" * 4

VALID = [
    # (input, normalised reference, cache key)
    ("", DEFAULT, DEFAULT),
    ("   \t\n", DEFAULT, DEFAULT),
    (None, DEFAULT, DEFAULT),
    ("ubuntu2404", DEFAULT, DEFAULT),
    ("default", DEFAULT, DEFAULT),
    ("ubuntu", DEFAULT, DEFAULT),
    ("  Ubuntu2204  ", DEFAULT, DEFAULT),
    ("ubuntu:25.10", DEFAULT, DEFAULT),
    (" ubuntu:25.10 ", DEFAULT, DEFAULT),
    ("docker.io/library/ubuntu:25.10", DEFAULT, DEFAULT),
    ("docker.io/ubuntu:25.10", DEFAULT, DEFAULT),
    ("index.docker.io/library/ubuntu:25.10", DEFAULT, DEFAULT),
    ("docker://ubuntu:25.10", DEFAULT, DEFAULT),
    ("ubuntu:latest", "docker.io/library/ubuntu:latest", "docker.io/library/ubuntu:latest"),
    ("user/img:tag", "docker.io/user/img:tag", "docker.io/user/img:tag"),
    ("user/img", "docker.io/user/img:latest", "docker.io/user/img:latest"),
    ("sagemathinc/cocalc-docker:v1_2-RC", "docker.io/sagemathinc/cocalc-docker:v1_2-RC",
     "docker.io/sagemathinc/cocalc-docker:v1_2-RC"),
    ("localhost/x:1", "localhost/x:1", "localhost/x:1"),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
    ("registry.example:5000/a/b:c", "registry.example:5000/a/b:c", "registry.example:5000/a/b:c"),
    ("Registry.Example:5000/a/b:c", "registry.example:5000/a/b:c", "registry.example:5000/a/b:c"),
    ("127.0.0.1:5000/test/bb:1", "127.0.0.1:5000/test/bb:1", "127.0.0.1:5000/test/bb:1"),
    ("ghcr.io/org/team/img:2024.01", "ghcr.io/org/team/img:2024.01", "ghcr.io/org/team/img:2024.01"),
    (f"ubuntu@{DIGEST}", f"docker.io/library/ubuntu@{DIGEST}", f"docker.io/library/ubuntu@{DIGEST}"),
    (f"ubuntu:25.10@{DIGEST}", f"docker.io/library/ubuntu:25.10@{DIGEST}",
     f"docker.io/library/ubuntu:25.10@{DIGEST}"),
    (f"quay.io/a/b@{DIGEST}", f"quay.io/a/b@{DIGEST}", f"quay.io/a/b@{DIGEST}"),
    ("a__b/c-d.e:f", "docker.io/a__b/c-d.e:f", "docker.io/a__b/c-d.e:f"),
    ("dir:/srv/images/base", "dir:/srv/images/base", "dir/srv/images/base"),
    ("oci-archive:/srv/img.tar", "oci-archive:/srv/img.tar", "oci-archive/srv/img.tar"),
    ("docker-archive:/srv/img.tar", "docker-archive:/srv/img.tar", "docker-archive/srv/img.tar"),
]

INVALID = [
    # (input, words the one-line error must contain)
    ("../../etc", "host name"),
    ("../etc/passwd:1", "host name"),
    ("/etc/passwd", "repository component"),
    ("a/../b:1", "repository component"),
    ("ubuntu;rm -rf /", "characters"),
    ("$(id)", "characters"),
    ("`id`", "characters"),
    ("a|b", "characters"),
    ("a b:1", "characters"),
    ("x\ny", "characters"),
    ("img:tag\x00", "characters"),
    ("ubuntu:25.10 && reboot", "characters"),
    ("é/img:1", "characters"),
    ("a" * 10_000, "longer than 512"),
    ("docker.io/" + "a" * 600 + ":1", "longer than 512"),
    ("Ubuntu:25.10", "lowercase"),
    ("docker.io/User/img:1", "lowercase"),
    ("ubuntu:", "tag"),
    ("ubuntu:.hidden", "tag"),
    ("ubuntu:" + "t" * 129, "tag"),
    ("ubuntu@sha256:abc", "digest"),
    ("ubuntu@md5:" + "0" * 32, "digest"),
    ("-img/x:1", "repository component"),
    ("img-/x:1", "repository component"),
    ("a//b:1", "repository component"),
    ("reg-.example/a:1", "host name"),
    ("dir:relative/path", "absolute"),
    ("dir:/srv/../etc", "absolute"),
    ("dir:/srv/./x", "absolute"),
    ("dir:/srv/x/", "absolute"),
    ("dir:/", "absolute"),
    ("oci-archive:/a.tar:ref", "absolute"),
    ("oci-archive:/srv/.hidden", "absolute"),
]


@pytest.mark.parametrize("raw,ref,key", VALID, ids=[repr(v[0])[:40] for v in VALID])
def test_normalize_valid(raw, ref, key):
    result = normalize(raw, "ubuntu:25.10")
    assert (result.ref, result.key) == (ref, key)
    assert normalize(result.ref, "ubuntu:25.10") == result, "normalising twice changes nothing"


@pytest.mark.parametrize("raw,words", INVALID, ids=[repr(v[0])[:40] for v in INVALID])
def test_normalize_invalid_is_one_clear_line(raw, words):
    with pytest.raises(InvalidInput) as err:
        normalize(raw, "ubuntu:25.10")
    line = err.value.one_line()
    assert words in line
    assert "\n" not in line and len(line) < 400


def test_default_image_comes_from_the_argument():
    assert normalize("", "registry.example/base/img:7").ref == "registry.example/base/img:7"
    assert normalize("legacy", "registry.example/base/img:7").ref == "registry.example/base/img:7"


def test_default_image_must_itself_be_a_full_reference():
    with pytest.raises(InvalidInput, match="rootfs.default_image"):
        normalize("", "ubuntu")


def test_local_keys_never_collide_with_markers_or_registry_keys():
    refs = [normalize(r, "ubuntu:25.10") for r, _, _ in VALID]
    assert not any("~" in r.key for r in refs)
    assert all(r.key.split("/")[0] in ("docker.io", "localhost", "dir", "oci-archive", "docker-archive")
               or "." in r.key.split("/")[0] or ":" in r.key.split("/")[0] for r in refs)


def test_pull_of_a_hostile_reference_runs_nothing(monkeypatch, tmp_path):
    from cocalc_ctl import config

    def boom(*a, **k):
        raise AssertionError("a command ran")

    monkeypatch.setattr(proc, "run", boom)
    monkeypatch.setattr(proc, "pipeline", boom)
    cfg = config.load(env={"COCALC_CTL_DATA_DIR": str(tmp_path / "data"), "COCALC_CTL_BTRFS_ROOT": str(tmp_path)})
    for raw in ("../../etc", "x;reboot", "a" * 10_000):
        with pytest.raises(InvalidInput):
            rootfs.pull(cfg, raw)
        with pytest.raises(InvalidInput):
            rootfs.rm(cfg, raw)
    assert not (tmp_path / "data").exists()


# -- the allow-list (rootfs.local_roots, rootfs.registries) -----------------------------------

def _cfg(tmp_path, **values):
    from cocalc_ctl import config

    env = {"COCALC_CTL_DATA_DIR": str(tmp_path / "data"), "COCALC_CTL_BTRFS_ROOT": str(tmp_path / "pool")}
    env.update({config.env_name(k): v for k, v in values.items()})
    return config.load(env=env)


@pytest.mark.parametrize("ref", ["ubuntu:25.10", "docker.io/library/debian", "registry.example:5000/a/b:1"])
def test_listed_registries_are_allowed(tmp_path, ref):
    cfg = _cfg(tmp_path, **{"rootfs.registries": "registry.example:5000"})
    assert rootfs.allowed(cfg, ref).ref == normalize(ref).ref


@pytest.mark.parametrize("ref", ["127.0.0.1:5000/a:1", "localhost/a:1", "localhost:5000/a:1",
                                 "registry.example/a:1", "registry.example:5001/a:1", "quay.io/a/b:1"])
def test_unlisted_registries_are_refused_naming_the_setting(tmp_path, ref):
    from cocalc_ctl.errors import PreconditionFailed

    cfg = _cfg(tmp_path, **{"rootfs.registries": "registry.example:5000"})
    with pytest.raises(PreconditionFailed) as exc:
        rootfs.allowed(cfg, ref)
    assert "rootfs.registries" in exc.value.one_line() and exc.value.exit_code == 5


def test_local_sources_need_a_root_and_resolve_symlinks(tmp_path):
    from cocalc_ctl.errors import PreconditionFailed

    (tmp_path / "images" / "tree").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "images" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PreconditionFailed) as exc:
        rootfs.allowed(_cfg(tmp_path), f"dir:{tmp_path}/images/tree")  # default: no roots = refused
    assert "rootfs.local_roots" in exc.value.one_line()
    cfg = _cfg(tmp_path, **{"rootfs.local_roots": str(tmp_path / "images")})
    assert rootfs.allowed(cfg, f"dir:{tmp_path}/images/tree").path == str(tmp_path / "images" / "tree")
    for ref in (f"dir:{tmp_path}/images/link", f"dir:{tmp_path}/outside", f"oci-archive:{tmp_path}/images2/x.tar"):
        with pytest.raises(PreconditionFailed) as exc:
            rootfs.allowed(cfg, ref)
        assert "rootfs.local_roots" in exc.value.one_line()
