import pytest

from cocalc_ctl import config
from cocalc_ctl.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.yaml"))
    cfg = config.load(None, env={})
    assert cfg.file is None
    assert cfg["btrfs_root"] == "/mnt/cocalc"
    assert cfg["data_dir"] == "/var/lib/cocalc-ctl"
    assert all(src == "default" for src in cfg.sources.values())


def test_file_then_env_override_with_sources(tmp_path):
    path = write(tmp_path, "btrfs_root: /pool\nbackup:\n  max_concurrent: 3\n  repo: /repo\n")
    cfg = config.load(path, env={"COCALC_CTL_BACKUP_MAX_CONCURRENT": "5"})
    assert cfg["btrfs_root"] == "/pool"
    assert cfg.sources["btrfs_root"] == f"file:{path}"
    assert cfg["backup.max_concurrent"] == 5
    assert cfg.sources["backup.max_concurrent"] == "env:COCALC_CTL_BACKUP_MAX_CONCURRENT"
    assert cfg["backup.repo"] == "/repo"
    assert cfg.secrets_dir == cfg.data_dir / "secrets"


def test_validation_error_names_key_and_file(tmp_path):
    path = write(tmp_path, "backup:\n  max_concurrent: lots\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, env={})
    msg = exc.value.one_line()
    assert "backup.max_concurrent" in msg and path in msg


def test_relative_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="btrfs_root"):
        config.load(write(tmp_path, "btrfs_root: relative/dir\n"), env={})


def test_unknown_key_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="btrfs_rot"):
        config.load(write(tmp_path, "btrfs_rot: /x\n"), env={})


def test_unknown_env_var_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="COCALC_CTL_BTRFS_ROT"):
        config.load(write(tmp_path, ""), env={"COCALC_CTL_BTRFS_ROT": "/x"})


def test_env_error_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match="COCALC_CTL_HOST_ID"):
        config.load(write(tmp_path, ""), env={"COCALC_CTL_HOST_ID": "not-a-uuid"})


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.yaml"), env={})


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "a: b\n  c: [\n")
    with pytest.raises(ConfigError, match="invalid YAML") as exc:
        config.load(path, env={})
    assert path in exc.value.one_line()


@pytest.mark.parametrize("dsn,hidden", [
    ("postgresql://cocalc:s3cret@db/hub", "s3cret"),
    ("host=db user=cocalc password=s3cret dbname=hub", "s3cret"),
    ("host=db password='s3 cret' dbname=hub", "s3 cret"),
])
def test_dsn_password_is_redacted(tmp_path, dsn, hidden):
    cfg = config.load(write(tmp_path, ""), env={"COCALC_CTL_HUB_DSN": dsn})
    assert hidden not in str(cfg.redacted())
    assert cfg["hub_dsn"] == dsn


@pytest.mark.parametrize("text,value", [("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", int(1.5 * (1 << 30))),
                                        ("4096", 4096)])
def test_parse_size(text, value):
    assert config.parse_size(text) == value


def test_duplicate_key_is_refused_naming_key_and_lines(tmp_path):
    path = write(tmp_path, "data_dir: /a\nbackup:\n  repo: /r\ndata_dir: /b\n")
    with pytest.raises(ConfigError) as exc:
        config.load(path, env={})
    text = exc.value.one_line()
    assert "'data_dir'" in text and "line 4" in text and "line 1" in text and path in text


def test_duplicate_nested_key_is_refused(tmp_path):
    path = write(tmp_path, "backup:\n  repo: /r\n  repo: /s\n")
    with pytest.raises(ConfigError, match=r"line 3: key 'repo' is given twice \(first on line 2\)"):
        config.load(path, env={})


def test_dotted_and_nested_spelling_of_one_key_is_refused(tmp_path):
    path = write(tmp_path, "backup.repo: /r\nbackup:\n  repo: /s\n")
    with pytest.raises(ConfigError, match="'backup.repo' is given twice"):
        config.load(path, env={})


def test_non_utf8_config_is_a_config_error_with_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"backup:\n  repo: /r\ndata_dir: /caf\xe9\n")
    with pytest.raises(ConfigError, match=r"line 3: not UTF-8 text \(byte 0xe9\)") as exc:
        config.load(str(p), env={})
    assert exc.value.exit_code == 2 and exc.value.hint
