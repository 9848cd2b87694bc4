"""The hub principal: the Ed25519 keypair of the machine(s) running `move worker`.

`<secrets_dir>/hub/hub_key` (0600 in a 0700 dir, OpenSSH format, `.pub` beside it) signs move
tickets and is the only key the hosts' `cocalc-hub` login accepts. Each hub machine has its own key
and id (`<secrets_dir>/hub/hub_id`, a uuid). `hub keys ensure` creates both and publishes the public
key(s) in the hub's `hub_keys` table (NOTIFY cocalc_ctl_keys), from where `keys sync` pins them on
every trusted host. Rotation as for host keys: `hub keys rotate` keeps the old key as
`hub_key.previous`, publishes both and signs tickets with both until `hub keys rotate --finish`
(run it once every host has synced the new key).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import ids, proc
from cocalc_ctl.actions.keys import keys as keys_mod
from cocalc_ctl.config import Config
from cocalc_ctl.errors import PreconditionFailed
from cocalc_ctl.tools import ssh

KEY_DIR, KEY_FILE, ID_FILE = "hub", "hub_key", "hub_id"


@dataclass
class HubKeysResult:
    hub_id: str | None
    path: str
    action: str  # "created" | "existing" | "shown" | "rotated" | "finished" | "nothing to finish"
    public_key: str | None
    fingerprint: str | None
    previous_public_key: str | None = None
    previous_fingerprint: str | None = None
    published: bool = False
    hint: str | None = None


def key_path(cfg: Config) -> Path:
    return cfg.secrets_dir / KEY_DIR / KEY_FILE


def previous_path(cfg: Config) -> Path:
    p = key_path(cfg)
    return p.with_name(p.name + keys_mod.PREVIOUS_SUFFIX)


def _id_path(cfg: Config) -> Path:
    return cfg.secrets_dir / KEY_DIR / ID_FILE


def hub_id(cfg: Config) -> str | None:
    p = _id_path(cfg)
    if not os.path.lexists(p):
        return None
    text = keys_mod.read_secret(p).decode("ascii", "replace").strip()
    if not ids.is_uuid(text):
        raise PreconditionFailed(f"{p} does not hold a hub id (uuid)", hint=f"remove {p}; `hub keys ensure` makes one")
    return text


def _comment(hid: str) -> str:
    return f"cocalc-ctl-hub@{hid}"


def public_lines(cfg: Config) -> list[str]:
    """Current hub public key first, then the previous one during a rotation."""
    return keys_mod.public_lines_at([key_path(cfg), previous_path(cfg)])


def _result(cfg: Config, action: str, hint: str | None = None, published: bool = False) -> HubKeysResult:
    lines = public_lines(cfg)
    cur = ssh.parse_public_key(lines[0]) if lines else None
    prev = ssh.parse_public_key(lines[1]) if len(lines) > 1 else None
    return HubKeysResult(hub_id(cfg) if os.path.lexists(cfg.secrets_dir / KEY_DIR) else None, str(key_path(cfg)),
                         action, cur.line if cur else None, cur.fingerprint if cur else None,
                         prev.line if prev else None, prev.fingerprint if prev else None, published, hint)


def ensure(cfg: Config, *, publish: bool = True) -> HubKeysResult:
    with keys_mod.keys_lock(cfg):
        path = key_path(cfg)
        if os.path.lexists(cfg.secrets_dir):
            keys_mod.check_secret_dir(cfg.secrets_dir)
        keys_mod.ensure_dir(path.parent)
        idp = _id_path(cfg)
        if not os.path.lexists(idp) and not proc.plan_only(f"# write a new hub id to {idp} (0600)"):
            keys_mod.write_new_file(idp, (str(uuid.uuid4()) + "\n").encode(), 0o600)
        hid = hub_id(cfg) or "00000000-0000-0000-0000-000000000000"
        action = "existing"
        if os.path.lexists(path):
            keys_mod.check_pair(path, _comment(hid))
            if os.path.lexists(previous_path(cfg)):
                keys_mod.check_pair(previous_path(cfg), _comment(hid) + "-previous")
        else:
            if os.path.lexists(keys_mod.pub_path(path)):
                raise PreconditionFailed(f"{keys_mod.pub_path(path)} exists without its private key {path}",
                                         hint="remove it (or restore the private key) and rerun")
            if not proc.plan_only(f"# generate an ed25519 hub key {path} (0600) and {path}.pub"):
                keys_mod.create_pair(path, _comment(hid))
            action = "created"
    published = publish_keys(cfg) if publish and cfg["hub_dsn"] else False
    return _result(cfg, action, None if published else "no hub_dsn: publish later with `hub keys ensure`",
                   published)


def show(cfg: Config) -> HubKeysResult:
    if not os.path.lexists(key_path(cfg)):
        raise PreconditionFailed(f"there is no hub key at {key_path(cfg)}", hint="run `cocalc-ctl hub keys ensure`")
    return _result(cfg, "shown")


def rotate(cfg: Config, *, finish: bool = False) -> HubKeysResult:
    with keys_mod.keys_lock(cfg):
        path, prev = key_path(cfg), previous_path(cfg)
        if not os.path.lexists(path):
            raise PreconditionFailed(f"there is no hub key to rotate at {path}", hint="run `cocalc-ctl hub keys ensure`")
        keys_mod.read_secret(path)
        hid = hub_id(cfg) or "00000000-0000-0000-0000-000000000000"
        if finish:
            if not os.path.lexists(prev) and not os.path.lexists(keys_mod.pub_path(prev)):
                return _result(cfg, "nothing to finish", "no rotation is in progress")
            if not proc.plan_only(f"rm -f {prev} {prev}.pub"):
                for p in (prev, keys_mod.pub_path(prev)):
                    if os.path.lexists(p):
                        os.unlink(p)
            action, hint = "finished", "hosts drop the old key at their next `keys sync`"
        else:
            if os.path.lexists(prev) or os.path.lexists(keys_mod.pub_path(prev)):
                raise PreconditionFailed(f"a rotation of the hub key is already in progress ({prev} exists)",
                                         hint="finish it first: cocalc-ctl hub keys rotate --finish")
            if not proc.plan_only(f"mv {path} {prev}; # generate a new ed25519 hub key {path}"):
                for src, dst in ((path, prev), (keys_mod.pub_path(path), keys_mod.pub_path(prev))):
                    if os.path.lexists(src):
                        os.link(src, dst, follow_symlinks=False)
                        os.unlink(src)
                keys_mod.create_pair(path, _comment(hid))
            action = "rotated"
            hint = ("tickets are signed with both keys until `cocalc-ctl hub keys rotate --finish`; finish once every "
                    "host ran `keys sync`")
    published = publish_keys(cfg) if cfg["hub_dsn"] else False
    return _result(cfg, action, hint, published)


def publish_keys(cfg: Config) -> bool:
    """Upsert this hub's public key(s) into the hub's `hub_keys` table (hosts pin them on `keys sync`)."""
    from cocalc_ctl.state import hub_db

    hid = hub_id(cfg)
    lines = public_lines(cfg)
    if hid is None or not lines:
        raise PreconditionFailed("this hub has no key yet", hint="run `cocalc-ctl hub keys ensure`")
    if proc.plan_only(f"# upsert hub {hid}'s {len(lines)} public key(s) into hub_keys and NOTIFY cocalc_ctl_keys"):
        return False
    with hub_db.connect(cfg["hub_dsn"]) as conn:
        conn.execute("""INSERT INTO hub_keys(hub_id, public_keys, updated_at) VALUES (%s, %s, now())
                        ON CONFLICT (hub_id) DO UPDATE SET public_keys = EXCLUDED.public_keys, updated_at = now()
                        WHERE hub_keys.public_keys IS DISTINCT FROM EXCLUDED.public_keys""",
                     (hid, "\n".join(lines)))
    return True


def signing_keys(cfg: Config) -> list:
    """The private keys tickets are signed with: current, then previous during a rotation."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = []
    with keys_mod.keys_lock(cfg):  # never between a rotation's rename and its new key
        for p in (key_path(cfg), previous_path(cfg)):
            if not os.path.lexists(p):
                if p == key_path(cfg):
                    raise PreconditionFailed(f"the move worker has no hub key at {p}",
                                             hint="run `cocalc-ctl hub keys ensure` on this machine")
                continue
            key = serialization.load_ssh_private_key(keys_mod.read_secret(p), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise PreconditionFailed(f"{p} is not an Ed25519 key", hint="move it away and run `hub keys ensure`")
            out.append(key)
    return out
