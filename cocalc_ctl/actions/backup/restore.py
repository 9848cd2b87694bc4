"""Restore a project (or one path of it) from a backup, crash-safely.

A full restore never writes into the live project. It restores into a fresh staging subvolume
`<btrfs_root>/.restore-staging/project-<uuid>` next to a marker `.restore_in_progress.<uuid>`
(phase `restoring`), verifies it, copies the persist store out of it, marks the restore `verified`,
then swaps: the live project's `.snapshots` moves into staging, live → `project-<uuid>.old`,
staging → live, persist store swapped the same way, the old tree deleted, the marker removed.

Every step is a rename, so a crash leaves whole trees only, and `recover` (run before every
restore and backup of the project) finishes the job: a `restoring` marker rolls back (staging
deleted, live untouched); a `verified` marker rolls forward.

A path restore restores into a hidden directory inside the live project (same subvolume, so a
rename can place it), then swaps just that path.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid as uuid_mod
from dataclasses import dataclass
from pathlib import Path

from cocalc_ctl import ids, layout, locks, output, proc, safepath
from cocalc_ctl.actions.backup import common, repository
from cocalc_ctl.actions.host.pool import require_pool
from cocalc_ctl.actions.project import project_ssh
from cocalc_ctl.config import Config
from cocalc_ctl.errors import Busy, CommandFailed, InvalidInput, NotFound, OperationFailed
from cocalc_ctl.state import host_db
from cocalc_ctl.tools import backup_engine, btrfs, extents

PATH_TMP_PREFIX = ".cocalc-ctl-restore-"
# Crash tests name a step here to have the process SIGKILL itself right after it.
FAILPOINT_ENV = "CCTL_FAILPOINT"


def _failpoint(name: str) -> None:
    if os.environ.get(FAILPOINT_ENV) == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class CleanupResult:
    project_id: str
    actions: list[str]


def cleanup(cfg: Config, project_id: str | None = None) -> list[CleanupResult]:
    """Recover every project with restore leftovers (or just one), each under its lock."""
    require_pool(cfg)
    if project_id:
        pids = [ids.project_id(project_id)]
    else:
        found = set()
        root = staging_root(cfg)
        if root.is_dir():
            for e in os.scandir(root):
                name = safepath.temp_target(e.name) or e.name  # a marker's temporary names its project too
                for prefix in (".restore_in_progress.", "project-"):
                    if name.startswith(prefix):
                        cand = name[len(prefix):].removesuffix(".old").removesuffix(".tmp")
                        if ids.is_uuid(cand):
                            found.add(cand)
        for e in os.scandir(cfg.btrfs_root):
            cand = e.name[len("project-"):] if e.name.startswith("project-") else ""
            if ids.is_uuid(cand) and any(n.startswith(PATH_TMP_PREFIX) for n in os.listdir(e.path)):
                found.add(cand)
        pids = sorted(found)
    out = []
    for pid in pids:
        with locks.hold(cfg.data_dir, common.project_lock(pid), what=f"project {pid} (backup or restore running)",
                        doing=f"restore clean-up of project {pid}"):
            out.append(CleanupResult(pid, recover(cfg, pid)))
    return out


@dataclass
class RestoreResult:
    project_id: str
    from_project: str
    backup_id: str
    path: str | None
    created_project: bool
    persist_restored: bool
    recovered: list[str]
    # A full restore writes new extents: the project's kept snapshots no longer share disk space
    # with its files, so the pool holds both copies until those snapshots are pruned.
    unshared_snapshots: int = 0
    shared_snapshot: str | None = None  # the newest snapshot the restored files share extents with
    shared_bytes: int = 0


# -- where things are ---------------------------------------------------------------------------

def staging_root(cfg: Config) -> Path:
    return cfg.btrfs_root / ".restore-staging"


def marker(cfg: Config, pid: str) -> Path:
    return staging_root(cfg) / f".restore_in_progress.{pid}"


def _marker_tmps(cfg: Config, pid: str) -> list[Path]:
    """Temporaries of a marker update cut short: safepath's, and the older `<marker>.tmp`."""
    path = marker(cfg, pid)
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return []
    return [path.with_name(n) for n in sorted(names)
            if n == path.name + ".tmp" or safepath.temp_target(n) == path.name]


def aside(cfg: Config, pid: str) -> Path:
    return staging_root(cfg) / f"project-{pid}.old"


def persist_new(cfg: Config, pid: str) -> Path:
    return layout.persist_dir(cfg, pid).parent / f".restore-{pid}"


def persist_old(cfg: Config, pid: str) -> Path:
    return layout.persist_dir(cfg, pid).parent / f".old-{pid}"


def _write_marker(cfg: Config, pid: str, data: dict) -> None:
    if proc.plan_only(f"# write {marker(cfg, pid)} phase={data['phase']}"):
        return
    safepath.write_atomic(marker(cfg, pid), json.dumps(data), mode=0o644)


def _read_marker(cfg: Config, pid: str) -> dict | None:
    try:
        return json.loads(marker(cfg, pid).read_text())
    except (OSError, ValueError):
        return None


def _rename(src: Path, dst: Path) -> None:
    if not proc.plan_only(f"mv {src} {dst}"):
        os.rename(src, dst)


def _rmtree(path: Path) -> None:
    if os.path.lexists(path) and not proc.plan_only(f"rm -rf {path}"):
        shutil.rmtree(path)


# -- recovery -----------------------------------------------------------------------------------

def recover(cfg: Config, pid: str) -> list[str]:
    """Finish or undo a restore a crash interrupted; return what was done. Caller holds the lock."""
    done: list[str] = []
    live = layout.project_subvolume(cfg, pid)
    staging = layout.restore_staging(cfg, pid)
    old = aside(cfg, pid)
    mark = _read_marker(cfg, pid)
    for tmp in _marker_tmps(cfg, pid):
        if not proc.plan_only(f"rm -f {tmp}"):
            tmp.unlink()  # a marker update cut short: the old marker (or none) still rules
    if mark and mark.get("phase") == "verified":
        _roll_forward(cfg, pid, mark)
        done.append("finished an interrupted restore (verified staging swapped in)")
    else:
        if mark or os.path.lexists(staging):
            # an unverified staging tree is never used: delete it, the live project is untouched
            if staging.is_dir() and (staging / layout.SNAPSHOTS).is_dir() and live.is_dir() \
                    and not (live / layout.SNAPSHOTS).exists():
                _rename(staging / layout.SNAPSHOTS, live / layout.SNAPSHOTS)
            common.remove_tree(staging)
            _rmtree(persist_new(cfg, pid))
            done.append("removed an unfinished restore staging")
        if os.path.lexists(old):
            if live.is_dir():
                common.remove_tree(old)
            else:
                _rename(old, live)
            done.append("removed the set-aside old project")
        if mark and not proc.plan_only(f"rm -f {marker(cfg, pid)}"):
            marker(cfg, pid).unlink(missing_ok=True)
    done += _recover_path_restores(cfg, pid)
    return done


def _roll_forward(cfg: Config, pid: str, mark: dict) -> None:
    """The swap, idempotent: every step checks what already happened."""
    live = layout.project_subvolume(cfg, pid)
    staging = layout.restore_staging(cfg, pid)
    old = aside(cfg, pid)
    snaps = layout.SNAPSHOTS
    if staging.is_dir():
        holder = live if live.is_dir() else (old if old.is_dir() else None)
        if holder is not None and (holder / snaps).is_dir() and not os.path.lexists(staging / snaps):
            _rename(holder / snaps, staging / snaps)  # keep the project's snapshots
            _failpoint("snapshots-moved")
        if not os.path.lexists(staging / snaps):
            proc.run(btrfs.subvolume_create(str(staging / snaps)))
        if live.is_dir():
            if os.path.lexists(old):
                common.remove_tree(old)
            _rename(live, old)
            _failpoint("live-set-aside")
        _rename(staging, live)
        _failpoint("staging-swapped-in")
    elif not live.is_dir() and old.is_dir():
        # the staged tree vanished (deleted by hand?): never delete the only copy, put it back
        _rename(old, live)
        output.warn(f"project {pid}: restore staging is gone; put the set-aside project back")
    _swap_persist(cfg, pid, bool(mark.get("persist")))
    if os.path.lexists(old):
        common.remove_tree(old)
    if not proc.plan_only(f"rm -f {marker(cfg, pid)}"):
        marker(cfg, pid).unlink(missing_ok=True)


def _swap_persist(cfg: Config, pid: str, restored: bool) -> None:
    cur, new, prev = layout.persist_dir(cfg, pid), persist_new(cfg, pid), persist_old(cfg, pid)
    if restored and os.path.lexists(new):
        if os.path.lexists(cur):
            _rmtree(prev)
            _rename(cur, prev)
            _failpoint("persist-set-aside")
        cur.parent.mkdir(parents=True, exist_ok=True)
        _rename(new, cur)
    elif not restored and os.path.lexists(cur) and not os.path.lexists(new):
        _rmtree(prev)
        _rename(cur, prev)  # the backup had no persist store: neither has the restored project
    _rmtree(prev)


def _recover_path_restores(cfg: Config, pid: str) -> list[str]:
    live = layout.project_subvolume(cfg, pid)
    done = []
    if not live.is_dir():
        return done
    for e in os.scandir(live):
        if not e.name.startswith(PATH_TMP_PREFIX):
            continue
        if not e.is_dir(follow_symlinks=False):
            continue  # ours are directories; anything else here was made by someone else
        try:
            rel = _clean_rel_path(os.fsdecode(safepath.read_file(live, (e.name, ".target"), limit=4096) or b""))
        except (OSError, InvalidInput, OperationFailed):
            rel = None
        parts = tuple(rel.split("/")) if rel else ()
        if parts and safepath.lexists(live, (e.name, ".old")) and not safepath.lexists(live, parts):
            try:  # crashed between the two renames: put the old back
                _move_between(live, (e.name, ".old"), live, parts)
            except (OSError, safepath.UnsafePath):
                pass
        safepath.rmtree(live, (e.name,))
        done.append(f"removed an unfinished path restore {e.name}")
    return done


# -- restore ------------------------------------------------------------------------------------

def _clean_rel_path(path: str) -> str:
    if not path or "\x00" in path:
        raise InvalidInput("invalid --path: empty or contains NUL")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidInput(f"invalid --path {ids.quoted(path)}", hint="give a path inside the project, without ..")
    if parts[0] in (layout.SNAPSHOTS, common.PERSIST_IN_BACKUP, common.MANIFEST_IN_BACKUP) or parts[0].startswith(PATH_TMP_PREFIX):
        raise InvalidInput(f"--path {ids.quoted(path)} is not project content")
    return "/".join(parts)


def restore(cfg: Config, project_id: str, backup_id: str, *, path: str | None = None,
            to_project: str | None = None, force: bool = False, quota: int | None = None) -> RestoreResult:
    """`quota`: the qgroup limit (bytes) for a full restore; default the live project's, else
    `project.quota`."""
    src = ids.project_id(project_id)
    dst = ids.project_id(to_project, what="--to-project id") if to_project else src
    rel = _clean_rel_path(path) if path is not None else None
    require_pool(cfg)
    eng = repository.with_version(repository.engine_for(cfg))
    with locks.hold(cfg.data_dir, common.project_lock(dst), what=f"project {dst} (backup or restore running)",
                    doing=f"restore of project {dst} from backup {backup_id}" + (f" (--path {rel})" if rel else "")):
        if not force and host_db.db_path(cfg.data_dir).exists():
            with host_db.connect(cfg.data_dir) as conn:
                row = host_db.get_project(conn, dst)
            if row and row["state"] == "running":
                raise Busy(f"project {dst} is running", hint="stop it first with `project stop` or pass --force")
        recovered = recover(cfg, dst)
        for line in recovered:
            output.note(f"project {dst}: {line}")
        snap_id = repository.resolve_backup_id(cfg, eng, src, backup_id)
        if rel is not None:
            _restore_path(cfg, eng, dst, snap_id, rel)
            return RestoreResult(dst, src, snap_id, rel, False, False, recovered)
        created = not layout.project_subvolume(cfg, dst).is_dir()
        from cocalc_ctl.actions.project.subvolume import snapshot_names

        names = [] if created else snapshot_names(cfg, dst)[0]
        newest = _newest_snapshot(cfg, dst, names)
        sharing: dict = {}
        persist = _restore_full(cfg, eng, dst, snap_id, src, quota=quota, share_with=newest, sharing=sharing)
        if not proc.plan_only(f"# record project {dst} in {host_db.db_path(cfg.data_dir)}"):
            with host_db.connect(cfg.data_dir) as conn:
                if host_db.get_project(conn, dst) is None:
                    host_db.upsert_project(conn, dst, state="stopped")
        return RestoreResult(dst, src, snap_id, None, created, persist, recovered, len(names),
                             newest if sharing.get("bytes") else None, sharing.get("bytes", 0))


def _engine_restore(eng, snap_id: str, target: Path, include: str | None) -> None:
    from cocalc_ctl.actions.backup import progress

    sink = progress.SINK.get()
    if sink is None or proc.DRY_RUN:
        _engine_restore_quiet(eng, snap_id, target, include)
        return
    total_bytes = total_files = None
    argv = eng.restore_size(snap_id) if include is None else None  # a --path restore: total unknown
    if argv is not None:
        res = proc.run(argv, env=eng.env(), timeout=eng.timeout, mutates=False, check=False)
        stats = backup_engine.parse_json_line(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and \
            res.stdout.strip() else None
        if stats:
            total_bytes, total_files = stats.get("total_size"), stats.get("total_file_count")
    with progress.watch_tree(str(target), sink, total_bytes=total_bytes, total_files=total_files):
        _engine_restore_quiet(eng, snap_id, target, include)


def _engine_restore_quiet(eng, snap_id: str, target: Path, include: str | None) -> None:
    try:
        if eng.name == "rustic" and include:
            proc.run(eng.restore(snap_id, str(target / include), path="/" + include), env=eng.env(),
                     timeout=eng.timeout)
        else:
            proc.run(eng.restore(snap_id, str(target), path=("/" + include) if include else None), env=eng.env(),
                     timeout=eng.timeout)
    except CommandFailed as exc:
        raise backup_engine.classify(exc, repository.repo_display(eng.repo)) from None


def _check_manifest(manifest: Path, source_pid: str, snap_id: str) -> None:
    """A backup made by `backup create` names its project: refuse one that names another."""
    if proc.DRY_RUN or not os.path.lexists(manifest):
        return  # a live-tree backup, or one made by hand with the engine: nothing to compare
    try:
        named = json.loads(manifest.read_text()).get("project_id")
    except (OSError, ValueError, AttributeError):
        raise OperationFailed(f"backup {snap_id[:8]} has an unreadable manifest",
                              hint="check the repository with `restic check`") from None
    if named != source_pid:
        raise OperationFailed(f"backup {snap_id[:8]} holds project {named}, not {source_pid}",
                              hint="the repository's tags and contents disagree; check which backup you meant")


def _newest_snapshot(cfg: Config, pid: str, names: list[str]) -> str | None:
    """The snapshot created last (highest creation generation), if the project has any."""
    if not names or proc.DRY_RUN:
        return None
    listed = {s.name: s.cgen for s in btrfs.list_below(str(layout.snapshots_dir(cfg, pid)))}
    known = [n for n in names if n in listed]
    return max(known, key=lambda n: (listed[n], n)) if known else None


def _restore_full(cfg: Config, eng, pid: str, snap_id: str, source_pid: str, *, quota: int | None = None,
                  share_with: str | None = None, sharing: dict | None = None) -> bool:
    root = staging_root(cfg)
    staging = layout.restore_staging(cfg, pid)
    if not root.is_dir() and not proc.plan_only(f"mkdir -m 700 {root}"):
        root.mkdir(mode=0o700)
    mark = {"phase": "restoring", "backup_id": snap_id, "pid": os.getpid()}
    _write_marker(cfg, pid, mark)
    try:
        proc.run(btrfs.subvolume_create(str(staging)))
        _engine_restore(eng, snap_id, staging, None)
        _failpoint("engine-restored")
        _check_manifest(staging / common.MANIFEST_IN_BACKUP, source_pid, snap_id)
        if share_with and sharing is not None:
            # restic writes every file anew: give back the disk space of the files that are
            # unchanged since the newest snapshot (the kernel compares the bytes itself)
            sharing["bytes"] = extents.share_identical_files(
                str(layout.snapshot_path(cfg, pid, share_with)), str(staging), skip_top=(layout.SNAPSHOTS,))
        staged_persist = staging / common.PERSIST_IN_BACKUP
        has_persist = not proc.DRY_RUN and staged_persist.is_dir()
        pnew = persist_new(cfg, pid)
        _rmtree(pnew)
        if has_persist:
            pnew.parent.mkdir(parents=True, exist_ok=True)
            proc.run(["cp", "-a", "--reflink=auto", str(staged_persist), str(pnew)])
            proc.run(["rm", "-rf", "--one-file-system", str(staged_persist)])
            if pid != source_pid:  # the sshd host key is the source project's identity: the target makes its own
                proc.run(["rm", "-rf", "--one-file-system", str(pnew / project_ssh.PERSIST_SUBDIR)])
        manifest = staging / common.MANIFEST_IN_BACKUP
        if not proc.DRY_RUN and os.path.lexists(manifest):
            manifest.unlink()
        _carry_quota(cfg, pid, staging, quota)
        proc.run(["btrfs", "filesystem", "sync", str(cfg.btrfs_root)])  # staging durable before the swap
    except BaseException:
        # not verified: undo now (a SIGKILL instead leaves this to the next run's recover)
        if not proc.DRY_RUN:
            common.remove_tree(staging)
            _rmtree(persist_new(cfg, pid))
            marker(cfg, pid).unlink(missing_ok=True)
        raise
    mark.update(phase="verified", persist=has_persist)
    _write_marker(cfg, pid, mark)
    _failpoint("verified")
    if proc.DRY_RUN:
        live, old = layout.project_subvolume(cfg, pid), aside(cfg, pid)
        lines = [f"mv {live / layout.SNAPSHOTS} {staging / layout.SNAPSHOTS}", f"mv {live} {old}",
                 f"mv {staging} {live}", f"# swap {layout.persist_dir(cfg, pid)} with the restored one",
                 f"btrfs subvolume delete {old}", f"rm -f {marker(cfg, pid)}"]
        if not live.is_dir():  # a new project: nothing to set aside
            lines = [f"btrfs subvolume create {staging / layout.SNAPSHOTS}", lines[2], lines[3], lines[5]]
        for line in lines:
            proc.plan_only(line)
        return has_persist
    _roll_forward(cfg, pid, mark)
    return has_persist


def _carry_quota(cfg: Config, pid: str, staging: Path, quota: int | None = None) -> None:
    """The restored subvolume gets the given limit, else the live project's qgroup limit, else the
    configured default."""
    from cocalc_ctl.config import parse_size

    live = layout.project_subvolume(cfg, pid)
    limit = None
    if quota:
        limit = quota
    elif live.is_dir() and common.is_subvolume(live):
        sub = btrfs.show(str(live))
        q = btrfs.qgroups(str(live)).get(f"0/{sub.subvolume_id}")
        limit = q.max_referenced if q else None
    elif cfg["project.quota"]:
        limit = parse_size(cfg["project.quota"])
    if limit:
        proc.run(btrfs.qgroup_limit(limit, str(staging)))


def _move_between(src_root: Path, src: tuple[str, ...], dst_root: Path, dst: tuple[str, ...], *,
                  create: bool = False) -> None:
    """rename src_root/src… to dst_root/dst… by directory fds (safepath): a project's users own the
    live tree, so a symlinked component must not send root's rename outside the project."""
    with safepath.open_dir(src_root, src[:-1]) as sfd, \
            safepath.open_dir(dst_root, dst[:-1], create=create) as dfd:
        os.rename(src[-1], dst[-1], src_dir_fd=sfd, dst_dir_fd=dfd)


def _safe_parent(live: Path, rel: str, *, create: bool) -> Path:
    """The directory that will hold `rel` inside the live project, reached without following a
    symlink (a project's users own its tree: a symlinked component must not send root's rename
    outside the project)."""
    cur = live
    for part in rel.split("/")[:-1]:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            if not create:
                return cur
            os.mkdir(cur, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise OperationFailed(f"cannot restore {ids.quoted(rel)}: {ids.quoted(str(cur.relative_to(live)))} "
                                  "is a symlink or not a directory in the live project",
                                  hint="move it aside, or restore the whole project")
    return cur


def _plan_path_swap(live: Path, tmp: Path, rel: str) -> None:
    """--dry-run: the rest of a path restore, as the real run does it (checks the same symlinks)."""
    parent = _safe_parent(live, rel, create=False)
    dest = parent / rel.rsplit("/", 1)[-1]
    if not parent.is_dir():
        proc.plan_only(proc.display(["mkdir", "-p", str(parent)]))
    if os.path.lexists(dest):
        proc.plan_only(proc.display(["mv", str(dest), str(tmp / ".old")]))
    proc.plan_only(proc.display(["mv", str(tmp / rel), str(dest)]))
    proc.plan_only(proc.display(["rm", "-rf", str(tmp)]))


def _restore_path(cfg: Config, eng, pid: str, snap_id: str, rel: str) -> None:
    live = layout.project_subvolume(cfg, pid)
    if not live.is_dir():
        raise NotFound(f"project {pid} does not exist on this host",
                       hint="a --path restore writes into an existing project; restore it fully first")
    tmp = live / f"{PATH_TMP_PREFIX}{uuid_mod.uuid4().hex[:12]}"
    if proc.plan_only(f"mkdir -m 700 {tmp}"):
        _engine_restore(eng, snap_id, tmp, rel)
        _plan_path_swap(live, tmp, rel)
        return
    tmp.mkdir(mode=0o700)
    # The project owns its home and may be running (--force): it can move `tmp` aside and leave a
    # symlink in its place. Everything below goes through an fd on the directory made here (the
    # engine gets /proc/PID/fd/N, which names that directory whatever happens to its path).
    try:
        tfd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise OperationFailed(f"path restore into project {pid} failed: {tmp.name} was replaced "
                              f"({exc.strerror})", hint="stop the project and try again") from None
    held = Path(f"/proc/{os.getpid()}/fd/{tfd}")
    try:
        st = os.fstat(tfd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise OperationFailed(f"path restore into project {pid} failed: {tmp.name} was replaced",
                                  hint="stop the project and try again")
        fd = os.open(".target", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=tfd)
        try:
            os.write(fd, os.fsencode(rel))
        finally:
            os.close(fd)
        _engine_restore(eng, snap_id, held, rel)
        got = held / rel
        if not os.path.lexists(got):
            raise NotFound(f"path {ids.quoted(rel)} is not in backup {snap_id[:8]}",
                           hint="list the backup's files with the engine's `ls` command")
        parts = tuple(rel.split("/"))
        with safepath.open_dir(live, parts[:-1], create=True) as dfd:  # by fd: no symlink of the project followed
            name = parts[-1]
            try:
                os.stat(name, dir_fd=dfd, follow_symlinks=False)
                had_old = True
            except FileNotFoundError:
                had_old = False
            if had_old:
                os.rename(name, ".old", src_dir_fd=dfd, dst_dir_fd=tfd)
            try:
                os.rename(rel, name, src_dir_fd=tfd, dst_dir_fd=dfd)
            except OSError:
                if had_old:
                    os.rename(".old", name, src_dir_fd=tfd, dst_dir_fd=dfd)
                raise
    except safepath.UnsafePath as exc:
        raise OperationFailed(f"cannot restore {ids.quoted(rel)}: {exc.message}",
                              hint="move it aside in the live project, or restore the whole project") from None
    except OSError as exc:
        raise OperationFailed(f"path restore into project {pid} failed: {exc.strerror or exc}") from None
    finally:
        _remove_held(tmp, tfd)


def _remove_held(tmp: Path, tfd: int) -> None:
    """Empty the directory `tfd` holds (by fd, never through a path the project can change) and
    remove it if it is still at `tmp`; closes `tfd`."""
    try:
        # a new open of the directory: btrfs lists through an fd only what existed when it was opened
        lfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=tfd)
        try:
            names = os.listdir(lfd)
        finally:
            os.close(lfd)
        for name in names:
            if stat.S_ISDIR(os.lstat(name, dir_fd=tfd).st_mode):
                shutil.rmtree(name, dir_fd=tfd)
            else:
                os.unlink(name, dir_fd=tfd)
        try:
            if os.path.samestat(os.lstat(tmp), os.fstat(tfd)):
                os.rmdir(tmp)
        except OSError:
            pass  # moved aside by the project: an empty root-owned directory stays where it put it
    finally:
        os.close(tfd)
