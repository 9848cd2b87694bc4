"""Root filesystem images: reference normalisation, resolve, the local cache (pull, list, rm, gc).

A cache entry is the image's extracted filesystem at `<data_dir>/rootfs/<key>/` with a marker
`<key>~marker.json` beside it (`~` never occurs in a key, so a marker cannot collide with an entry).
An entry without its marker is incomplete and never used: the marker is written last, after the
tree was extracted into `.partial/` and renamed into place, so a failed or interrupted pull leaves
nothing usable behind and the next pull of that image cleans it up. Pulls of one image are
serialised by a lock per image; the second one finds the entry complete and does nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cocalc_ctl import ids, layout, locks, output, proc, safepath
from cocalc_ctl.actions.project import isolation
from cocalc_ctl.config import Config, parse_size
from cocalc_ctl.errors import Busy, InvalidInput, NotFound, OperationFailed, PreconditionFailed
from cocalc_ctl.tools import mounts, overlay, podman

MAX_REF_LENGTH = 512
MARKER_SUFFIX = "~marker.json"
PARTIAL_DIR = ".partial"
LOCAL_TRANSPORTS = ("dir", "oci-archive", "docker-archive")

_ALLOWED_CHARS_RE = re.compile(r"[A-Za-z0-9._:/@+-]*", re.ASCII)
LEGACY_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
_DOMAIN_COMPONENT = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])"
_DOMAIN_RE = re.compile(rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]{{1,5}})?", re.ASCII)
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}", re.ASCII)
_LOCAL_PATH_RE = re.compile(r"(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)+", re.ASCII)

DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class ImageRef:
    """A normalised image reference: `ref` is what is pulled and stored, `key` names its cache entry."""

    ref: str
    key: str
    transport: str  # docker | dir | oci-archive | docker-archive
    path: str | None = None  # the local file or directory of dir:/oci-archive:/docker-archive:


def _bad(raw: str, why: str) -> InvalidInput:
    return InvalidInput(f"invalid image reference {ids.quoted(raw)}: {why}",
                        hint="use e.g. ubuntu:25.10, registry.example:5000/team/image:tag, dir:/path "
                             "or oci-archive:/path/file.tar")


def normalize(raw: object, default_image: str = "ubuntu:25.10") -> ImageRef:
    """Normalise an image reference (SPEC §2). Pure: no I/O, no commands.

    Empty and legacy labels (a bare word: no `:`, no `/`) become the default image; Docker Hub
    names are qualified (`ubuntu:25.10` → `docker.io/library/ubuntu:25.10`) so one image has one
    cache key; a missing tag becomes `:latest`; anything else that is not a valid reference is
    refused with a one-line error.
    """
    if raw is None:
        raw = ""
    if not isinstance(raw, str):
        raise _bad(repr(raw), "not a string")
    text = raw.strip()
    if len(text) > MAX_REF_LENGTH:
        raise _bad(raw, f"longer than {MAX_REF_LENGTH} characters")
    if not text or LEGACY_LABEL_RE.fullmatch(text):  # a bare word: no ':', no '/'
        return normalize_default(default_image)
    if _ALLOWED_CHARS_RE.fullmatch(text) is None:
        raise _bad(raw, "contains characters that are not allowed (only letters, digits and . _ - : / @ +)")
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    for transport in LOCAL_TRANSPORTS:
        if text.startswith(transport + ":"):
            return _local_ref(raw, transport, text[len(transport) + 1:])
    return _registry_ref(raw, text)


def normalize_default(default_image: str) -> ImageRef:
    text = (default_image or "").strip()
    if not text or (":" not in text and "/" not in text):
        raise InvalidInput(f"rootfs.default_image {ids.quoted(default_image)} is not a full image reference",
                           hint="set it to e.g. ubuntu:25.10")
    return normalize(text, default_image="")


def _local_ref(raw: str, transport: str, path: str) -> ImageRef:
    if _LOCAL_PATH_RE.fullmatch(path) is None or os.path.normpath(path) != path:
        raise _bad(raw, f"{transport}: needs an absolute, normalised path (no '..', '//', '@', ':' or trailing '/')")
    if any(part in (".", "..") for part in path.split("/")):
        raise _bad(raw, "path components '.' and '..' are not allowed")
    return ImageRef(ref=f"{transport}:{path}", key=f"{transport}{path}", transport=transport, path=path)


def _registry_ref(raw: str, text: str) -> ImageRef:
    name_tag, digest = text, None
    if "@" in text:
        name_tag, digest = text.split("@", 1)
        if _DIGEST_RE.fullmatch(digest) is None:
            raise _bad(raw, "digest must be sha256:<64 hex> (or sha512:<128 hex>)")
    name, tag = name_tag, None
    colon, slash = name_tag.rfind(":"), name_tag.rfind("/")
    if colon > slash:
        name, tag = name_tag[:colon], name_tag[colon + 1:]
        if _TAG_RE.fullmatch(tag) is None:
            raise _bad(raw, "tag must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'")
    parts = name.split("/")
    first = parts[0]
    if len(parts) > 1 and (first.lower() == "localhost" or "." in first or ":" in first):
        domain, path = first.lower(), parts[1:]
        if domain == "index.docker.io":
            domain = DOCKER_HUB
        if _DOMAIN_RE.fullmatch(domain) is None:
            raise _bad(raw, f"registry {ids.quoted(first)} is not a host name[:port]")
    else:
        domain, path = DOCKER_HUB, parts
    if domain == DOCKER_HUB and len(path) == 1:
        path = ["library", *path]
    for comp in path:
        if _PATH_COMPONENT_RE.fullmatch(comp) is None:
            if _PATH_COMPONENT_RE.fullmatch(comp.lower()):
                raise _bad(raw, "repository names must be lowercase")
            raise _bad(raw, f"repository component {ids.quoted(comp)} is not valid "
                            "(lowercase letters and digits separated by '.', '_', '__' or '-')")
    repo = "/".join(path)
    if len(domain) + 1 + len(repo) > 255:
        raise _bad(raw, "repository name longer than 255 characters")
    ref = f"{domain}/{repo}"
    if tag:
        ref += f":{tag}"
    if digest:
        ref += f"@{digest}"
    if not tag and not digest:
        ref += ":latest"
    return ImageRef(ref=ref, key=ref, transport="docker")


# -- the allow-list (where image references enter a host) -------------------------------------

_LOOPBACK_NAMES = ("localhost",)


def _registry_host(domain: str) -> str:
    """`host[:port]` without the port, lowercase."""
    if domain.startswith("["):
        return domain.split("]", 1)[0] + "]"
    return domain.rsplit(":", 1)[0] if ":" in domain else domain


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host in _LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_source(cfg: Config, ref: ImageRef) -> ImageRef:
    """Refuse an image source this host's config does not allow (SPEC §4: an image reference must not
    make a host read its own files or reach an arbitrary network address). Pure apart from realpath.

    Local sources (dir:, oci-archive:, docker-archive:) must resolve, symlinks followed, under one of
    `rootfs.local_roots` and never into secrets_dir, data_dir or the pool. Registry references must
    name docker.io or a registry listed in `rootfs.registries`, compared as the exact host[:port]
    (`registry.example` does not allow `registry.example:5000`; loopback registries only when listed)."""
    if ref.transport == "docker":
        domain = ref.ref.split("/", 1)[0]
        if domain in {r.lower() for r in cfg["rootfs.registries"]} | {DOCKER_HUB}:
            return ref
        what = "loopback registry" if _is_loopback(_registry_host(domain)) else "registry"
        raise PreconditionFailed(f"image {ref.ref}: {what} {domain} is not allowed on this host",
                                 hint=f"add {domain} to rootfs.registries in the host's config if it should be")
    roots = [os.path.realpath(r) for r in cfg["rootfs.local_roots"]]
    if not roots:
        raise PreconditionFailed(f"image {ref.ref}: local image sources are not allowed on this host",
                                 hint="list the directories they may come from in rootfs.local_roots")
    real = os.path.realpath(ref.path)
    forbidden = {"secrets_dir": cfg.secrets_dir, "data_dir": cfg.data_dir, "btrfs_root": cfg.btrfs_root}
    for relation, test in (("lies in", lambda w: _inside(real, w)), ("contains", lambda w: _inside(w, real))):
        for setting, where in forbidden.items():
            where_real = os.path.realpath(where)
            if test(where_real):
                raise PreconditionFailed(f"image {ref.ref}: {real} {relation} {setting} ({where_real}); "
                                         "refusing to use it as an image",
                                         hint="keep image sources outside cocalc-ctl's directories")
    if not any(_inside(real, root) for root in roots):
        shown = real if real == ref.path else f"{ref.path} (resolves to {real})"
        raise PreconditionFailed(f"image {ref.ref}: {shown} is not under rootfs.local_roots",
                                 hint="move it under one of " + ", ".join(roots) + " or add its directory to "
                                      "rootfs.local_roots")
    return ImageRef(ref.ref, ref.key, ref.transport, real)


def allowed(cfg: Config, raw: object) -> ImageRef:
    """normalise + check_source: every host-side entry point of an image reference goes through here."""
    return check_source(cfg, normalize(raw, cfg["rootfs.default_image"]))


# -- cache paths ------------------------------------------------------------------------------

def entry_path(cfg: Config, key: str) -> Path:
    return layout.rootfs_cache(cfg) / key


def marker_path(cfg: Config, key: str) -> Path:
    return layout.rootfs_cache(cfg) / (key + MARKER_SUFFIX)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def lock_name(key: str) -> str:
    return f"rootfs-{_key_hash(key)}"


def read_marker(cfg: Config, key: str) -> dict | None:
    try:
        data = json.loads(marker_path(cfg, key).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_cached(cfg: Config, key: str) -> bool:
    return os.path.lexists(entry_path(cfg, key)) and read_marker(cfg, key) is not None


def lower_dir(cfg: Config, key: str) -> Path:
    """The directory an overlay uses as its lower layer (a bind-used dir: entry is followed)."""
    return Path(os.path.realpath(entry_path(cfg, key)))


def podman_storage(cfg: Config) -> podman.Storage:
    opts = tuple(o.strip() for o in (cfg["podman.storage_opts"] or "").split(",") if o.strip())
    return podman.Storage(root=cfg["podman.root"], runroot=cfg["podman.runroot"], tmpdir=cfg["podman.tmpdir"],
                          driver=cfg["podman.storage_driver"], opts=opts)


# -- resolve ----------------------------------------------------------------------------------

@dataclass
class ResolveResult:
    project_id: str
    image: str
    key: str
    source: str  # option | hub | host | default
    raw: str | None


def hub_image(cfg: Config, pid: str) -> str | None:
    """`COALESCE(rootfs_image, compute_image)` of a project in the hub; NotFound if it has no row."""
    from cocalc_ctl.state import hub_db

    import psycopg

    try:
        with hub_db.connect(cfg["hub_dsn"]) as conn:
            row = conn.execute("SELECT COALESCE(rootfs_image, compute_image) FROM projects WHERE project_id = %s",
                               (pid,)).fetchone()
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["query failed"])[0]
        raise OperationFailed(f"cannot read the project's image from the hub: {first}",
                              hint="run `cocalc-ctl hub migrate` or check hub_dsn") from None
    if row is None:
        raise NotFound(f"project {pid} is not in the hub's projects table",
                       hint="check the project id, or pass --image")
    return row[0]


def resolve(cfg: Config, project_id: str, *, image: str | None = None, store: bool = True) -> ResolveResult:
    """The project's image: --image, else the hub (when hub_dsn is set), else host sqlite, else the default."""
    from cocalc_ctl.actions.project.subvolume import existing_project
    from cocalc_ctl.state import host_db

    pid = ids.project_id(project_id)
    default = cfg["rootfs.default_image"]
    if image is not None:
        ref, source, raw = allowed(cfg, image), "option", image  # refused before any I/O
        existing_project(cfg, pid)
    else:
        existing_project(cfg, pid)
        row = None
        if host_db.db_path(cfg.data_dir).exists():
            with host_db.connect(cfg.data_dir) as conn:
                row = host_db.get_project(conn, pid)
        hub_raw: str | None = None
        hub_ok = False
        if cfg["hub_dsn"]:
            try:
                hub_raw, hub_ok = hub_image(cfg, pid), True
            except OperationFailed as exc:
                # a host must still start its projects while the hub is down: use what it recorded
                if row is None or not row["image"]:
                    raise
                output.warn(f"{exc.message}; using the image recorded on this host")
        if hub_ok:
            raw = hub_raw
            ref, source = allowed(cfg, raw), "hub" if (raw or "").strip() else "default"
        elif row is not None and row["image"]:
            raw = row["image"]
            ref, source = allowed(cfg, raw), "host"
        else:
            raw, ref, source = None, check_source(cfg, normalize_default(default)), "default"
    if store and not proc.plan_only(f"# record image {ref.ref} for project {pid} in host sqlite"):
        with host_db.connect(cfg.data_dir) as conn:
            host_db.upsert_project(conn, pid, image=ref.ref)
    return ResolveResult(pid, ref.ref, ref.key, source, raw)


# -- pull -------------------------------------------------------------------------------------

@dataclass
class PullResult:
    image: str
    key: str
    path: str
    downloaded: bool
    digest: str | None = None
    image_id: str | None = None
    size_bytes: int | None = None
    pulled_at: str | None = None
    kept_podman_copy: bool = False


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _rm_tree(path: Path) -> None:
    if os.path.islink(path) or path.is_file():
        path.unlink()
    elif path.exists():
        proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])


def _tree_size(path: Path) -> int | None:
    res = proc.run(["du", "-sb", "--", str(path) + "/"], mutates=False, check=False)
    try:
        return int(res.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def _copy_tree(src: str, dst: Path) -> None:
    """Copy a whole tree keeping hard links, symlinks, xattrs, numeric owners and special files."""
    dst.mkdir(parents=True, exist_ok=True)
    proc.run(["cp", "-a", "--", src.rstrip("/") + "/.", str(dst)])


def _progress(msg: str) -> None:
    if output.is_tty() or proc.VERBOSE:
        output.note(msg)


def pull(cfg: Config, image: str, *, force: bool = False, keep: bool | None = None) -> PullResult:
    ref = allowed(cfg, image)
    keep = cfg["rootfs.keep_podman_copy"] if keep is None else keep
    if ref.transport == "dir" and not os.path.isdir(ref.path):
        raise NotFound(f"rootfs directory {ref.path} does not exist")
    if ref.transport in ("oci-archive", "docker-archive") and not os.path.isfile(ref.path):
        raise NotFound(f"image archive {ref.path} does not exist")
    if ref.transport == "docker":
        proc.which("podman")
    cache = layout.rootfs_cache(cfg)
    entry, marker = entry_path(cfg, ref.key), marker_path(cfg, ref.key)
    if proc.DRY_RUN:
        return _plan_pull(cfg, ref, force)
    cache.mkdir(parents=True, exist_ok=True)
    with locks.hold(cfg.data_dir, lock_name(ref.key), wait=True, timeout=float(cfg["command_timeout"]),
                    what=f"pull of {ref.ref}"):
        existing = read_marker(cfg, ref.key)
        if existing is not None and os.path.lexists(entry) and not force:
            return _result_from_marker(cfg, ref, existing, downloaded=False)
        if force and existing is not None and mounted_projects(cfg).get(ref.key):
            raise Busy(f"image {ref.ref} is mounted by project(s) {', '.join(mounted_projects(cfg)[ref.key])}",
                       hint="stop those projects (or `rootfs umount`) before a forced pull")
        partial = cache / PARTIAL_DIR / _key_hash(ref.key)
        if partial.exists():
            _rm_tree(partial)  # left by a crashed pull of this image; we hold its lock
        partial.mkdir(parents=True)
        new_root = partial / "root"
        try:
            info = _fetch(cfg, ref, new_root, keep)
            size = _tree_size(new_root) if not new_root.is_symlink() else _tree_size(Path(os.path.realpath(new_root)))
            data = {"image": ref.ref, "key": ref.key, "source": ref.ref, "transport": ref.transport,
                    "digest": info.get("digest"), "image_id": info.get("image_id"), "size_bytes": size,
                    "pulled_at": _now_iso(), "kept_podman_copy": info.get("kept", False),
                    "inspect": info.get("inspect") or {}}
            # Swap in: drop the old marker first (the old entry becomes incomplete), move the old
            # tree aside, rename the new tree into place, then write the marker last.
            marker.unlink(missing_ok=True)
            if os.path.lexists(entry):
                os.rename(entry, partial / "old")
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.rename(new_root, entry)
            safepath.write_atomic(marker, json.dumps(data, indent=2) + "\n", mode=0o644)
        finally:
            _rm_tree(partial)
    return _result_from_marker(cfg, ref, data, downloaded=True)


def _plan_pull(cfg: Config, ref: ImageRef, force: bool) -> PullResult:
    entry = entry_path(cfg, ref.key)
    if is_cached(cfg, ref.key) and not force:
        return _result_from_marker(cfg, ref, read_marker(cfg, ref.key) or {}, downloaded=False)
    if ref.transport == "dir":
        proc.plan_only(f"cp -a {ref.path}/. {entry}")
    else:
        store = podman_storage(cfg)
        proc.run(podman.pull(store, ref.ref, tls_verify=cfg["podman.tls_verify"], cert_dir=cfg["podman.cert_dir"]))
        proc.plan_only(f"podman image mount IMAGE_ID && cp -a MOUNTPOINT/. {entry} && podman image umount IMAGE_ID"
                       " && podman rmi IMAGE_ID")
    proc.plan_only(f"# write {marker_path(cfg, ref.key)}")
    return PullResult(ref.ref, ref.key, str(entry), downloaded=False)


def _fetch(cfg: Config, ref: ImageRef, dest: Path, keep: bool) -> dict:
    """Put the image's filesystem at `dest` (which must not exist yet); return marker facts."""
    if ref.transport == "dir":
        if cfg["rootfs.dir_source"] == "bind":
            os.symlink(ref.path, dest)
        else:
            _progress(f"copying {ref.path} ...")
            _copy_tree(ref.path, dest)
        return {"inspect": {"Config": {}}}
    store = podman_storage(cfg)
    before = podman.parse_image_ids(proc.run(podman.image_ids(store), mutates=False).stdout)
    image_id = None
    if ref.ref.startswith("localhost/") and proc.run(podman.image_exists(store, ref.ref), mutates=False,
                                                     check=False).returncode == 0:
        image_id = podman.parse_image_id(
            proc.run(podman.podman(store, "image", "inspect", "--format", "{{.Id}}", "--", ref.ref),
                     mutates=False).stdout)
    if image_id is None:
        _progress(f"pulling {ref.ref} ...")
        try:
            res = proc.run(podman.pull(store, ref.ref, tls_verify=cfg["podman.tls_verify"],
                                       cert_dir=cfg["podman.cert_dir"]))
        except OperationFailed as exc:
            raise OperationFailed(f"pull of {ref.ref} failed: {exc.message}",
                                  hint="check the image name, that the registry is reachable, and podman.tls_verify"
                                  ) from None
        image_id = podman.parse_image_id(res.stdout)
        if image_id is None:
            raise OperationFailed(f"podman pull of {ref.ref} printed no image id")
    ours = image_id not in before
    try:
        inspect = podman.parse_inspect(proc.run(podman.image_inspect(store, image_id), mutates=False).stdout) or {}
        mountpoint = proc.run(podman.image_mount(store, image_id)).stdout.strip()
        if not mountpoint.startswith("/"):
            raise OperationFailed(f"podman image mount {image_id[:12]} printed no mount point")
        try:
            _progress(f"extracting {ref.ref} ...")
            _copy_tree(mountpoint, dest)
        finally:
            proc.run(podman.image_umount(store, image_id), check=False)
    finally:
        kept = keep or not ours
        if not kept:
            res = proc.run(podman.rmi(store, image_id), check=False)
            if res.returncode != 0:
                output.warn(f"could not remove podman's copy of {ref.ref}: {res.stderr.strip()[-200:]}")
    return {"inspect": inspect, "digest": inspect.get("Digest"), "image_id": image_id, "kept": kept}


def _result_from_marker(cfg: Config, ref: ImageRef, data: dict, *, downloaded: bool) -> PullResult:
    return PullResult(ref.ref, ref.key, str(entry_path(cfg, ref.key)), downloaded, data.get("digest"),
                      data.get("image_id"), data.get("size_bytes"), data.get("pulled_at"),
                      bool(data.get("kept_podman_copy")))


def ensure_cached(cfg: Config, ref: ImageRef) -> PullResult | None:
    """Pull `ref` unless it is in the cache already."""
    if is_cached(cfg, ref.key):
        return None
    return pull(cfg, ref.ref)


# -- which projects use which entry -----------------------------------------------------------

def mounted_projects(cfg: Config) -> dict[str, list[str]]:
    """{cache key: [project ids]} of overlay roots mounted under `<data_dir>/project-roots/`."""
    roots = str(cfg.data_dir / "project-roots") + "/"
    cache = layout.rootfs_cache(cfg)
    by_lower: dict[str, str] = {}
    for key in cached_keys(cfg):
        try:
            by_lower[overlay.escape_path(str(lower_dir(cfg, key)))] = key
        except ValueError:
            continue
    out: dict[str, list[str]] = {}
    for m in mounts.mounts():
        if m.fstype != "overlay" or not m.mountpoint.startswith(roots):
            continue
        pid = m.mountpoint[len(roots):]
        lower = overlay.lowerdir_of(m.options)
        source = isolation.mapped_lower_source(cfg, lower.replace("\\:", ":").replace("\\\\", "\\")) if lower else None
        if source is not None:  # the image seen through a project's id map
            lower = overlay.escape_path(source)
        key = by_lower.get(lower or "")
        if key is None and lower and lower.startswith(str(cache) + "/"):
            key = lower[len(str(cache)) + 1:].replace("\\:", ":").replace("\\\\", "\\")
        if key and ids.is_uuid(pid):
            out.setdefault(key, []).append(pid)
    return out


def cached_keys(cfg: Config) -> list[str]:
    """Keys of all entries that have a marker (complete or not yet renamed in)."""
    cache = layout.rootfs_cache(cfg)
    keys = []
    if not cache.is_dir():
        return keys
    for root, dirs, files in os.walk(cache):
        rel_root = os.path.relpath(root, cache)
        if rel_root == PARTIAL_DIR or rel_root.startswith(PARTIAL_DIR + "/"):
            dirs[:] = []
            continue
        # never descend into an entry's own tree
        dirs[:] = [d for d in dirs if d != PARTIAL_DIR and not os.path.exists(os.path.join(root, d + MARKER_SUFFIX))
                   and not os.path.islink(os.path.join(root, d))]
        for f in files:
            if f.endswith(MARKER_SUFFIX):
                rel = os.path.normpath(os.path.join(rel_root, f[:-len(MARKER_SUFFIX)]))
                keys.append(rel)
    return sorted(keys)


# -- list / rm / gc ---------------------------------------------------------------------------

@dataclass
class CacheEntry:
    image: str
    key: str
    path: str
    size_bytes: int | None
    pulled_at: str | None
    digest: str | None
    projects: list[str] = field(default_factory=list)  # projects whose image this is (host sqlite)
    mounted_by: list[str] = field(default_factory=list)
    _marker_mtime_ns: int = 0  # orders entries pulled within the same second

    def age_key(self) -> tuple[str, int]:
        return (self.pulled_at or "", self._marker_mtime_ns)


def list_cache(cfg: Config) -> list[CacheEntry]:
    from cocalc_ctl.state import host_db

    users: dict[str, list[str]] = {}
    if host_db.db_path(cfg.data_dir).exists():
        with host_db.connect(cfg.data_dir) as conn:
            for row in host_db.list_projects(conn):
                if row["image"]:
                    try:
                        key = normalize(row["image"], cfg["rootfs.default_image"]).key
                    except InvalidInput:
                        continue
                    users.setdefault(key, []).append(row["project_id"])
    mounted = mounted_projects(cfg)
    out = []
    for key in cached_keys(cfg):
        data = read_marker(cfg, key)
        if data is None or not os.path.lexists(entry_path(cfg, key)):
            continue
        try:
            mtime = marker_path(cfg, key).stat().st_mtime_ns
        except OSError:
            mtime = 0
        out.append(CacheEntry(data.get("image") or key, key, str(entry_path(cfg, key)), data.get("size_bytes"),
                              data.get("pulled_at"), data.get("digest"), sorted(users.get(key, [])),
                              sorted(mounted.get(key, [])), mtime))
    return out


@dataclass
class RemoveResult:
    removed: list[str]
    freed_bytes: int
    kept: list[str] = field(default_factory=list)


def _remove_entry(cfg: Config, key: str) -> None:
    """Marker first (the entry stops being usable at once), then the tree."""
    marker = marker_path(cfg, key)
    if not proc.plan_only(f"rm -f {marker}"):
        marker.unlink(missing_ok=True)
    entry = entry_path(cfg, key)
    if os.path.islink(entry):
        if not proc.plan_only(f"rm {entry}"):
            entry.unlink()
    elif entry.exists():
        proc.run(["rm", "-rf", "--one-file-system", "--", str(entry)])


def rm(cfg: Config, image: str) -> RemoveResult:
    ref = normalize(image, cfg["rootfs.default_image"])
    if not os.path.lexists(entry_path(cfg, ref.key)) and not marker_path(cfg, ref.key).exists():
        raise NotFound(f"image {ref.ref} is not in the rootfs cache", hint="see `cocalc-ctl rootfs list`")
    with locks.hold(cfg.data_dir, lock_name(ref.key), what=f"image {ref.ref}"):
        users = mounted_projects(cfg).get(ref.key)
        if users:
            raise Busy(f"image {ref.ref} is mounted by project(s) {', '.join(users)}",
                       hint="stop them or `rootfs umount` them first")
        size = (read_marker(cfg, ref.key) or {}).get("size_bytes") or 0
        _remove_entry(cfg, ref.key)
    return RemoveResult([ref.ref], int(size))


def gc(cfg: Config, *, max_size: str | None = None) -> RemoveResult:
    """Drop unused entries (oldest first) until the cache fits `max_size`; without a budget drop every
    entry no project uses. Mounted entries are never touched; entries a project names go last."""
    budget_text = max_size or cfg["rootfs.gc_max_size"]
    budget = parse_size(budget_text) if budget_text else None
    entries = list_cache(cfg)
    total = sum(e.size_bytes or 0 for e in entries)
    cache = layout.rootfs_cache(cfg)
    partial = cache / PARTIAL_DIR
    if partial.is_dir():  # leftovers of crashed pulls whose lock nobody holds
        for d in partial.iterdir():
            if not locks.is_held(cfg.data_dir, f"rootfs-{d.name}"):
                if not proc.plan_only(f"rm -rf {d}"):
                    _rm_tree(d)
    unused = sorted((e for e in entries if not e.projects and not e.mounted_by), key=CacheEntry.age_key)
    named = sorted((e for e in entries if e.projects and not e.mounted_by), key=CacheEntry.age_key)
    removed, kept, freed = [], [], 0
    candidates = unused if budget is None else unused + named
    for e in candidates:
        if budget is not None and total - freed <= budget:
            break
        try:
            with locks.hold(cfg.data_dir, lock_name(e.key), what=f"image {e.image}"):
                if mounted_projects(cfg).get(e.key):
                    kept.append(e.image)
                    continue
                _remove_entry(cfg, e.key)
        except Busy:
            kept.append(e.image)
            continue
        removed.append(e.image)
        freed += e.size_bytes or 0
    return RemoveResult(removed, freed, kept)


def require_project_root_path_ok(path: Path) -> None:
    if ":" in str(path) or "," in str(path):
        raise PreconditionFailed(f"{path} contains ':' or ',', which podman --rootfs and overlay options cannot take",
                                 hint="choose a data_dir without ':' or ','")
