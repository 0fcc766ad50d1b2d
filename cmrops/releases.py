"""Releases: every versioned run, recorded so that it can be restored bit for bit.

A release is what one versioned run made. Its large outputs are in the DVC cache and remote,
addressed by ``dvc.lock``; the small files DVC does not cache (metrics, plots, the per-stage
metrics) and the files that say how it was made (``dvc.lock``, ``dvc.yaml``, ``params.yaml``)
are copied into a **release record**: a folder ``<id>/`` with those files and ``release.json``
(the id, when, the Airflow run, the data version, the sha256 of every file, the git commit and
tag, a few headline figures). The id is the UTC time and the start of ``dvc.lock``'s sha256:
``20261207T053012Z-3fa2c1d0``.

Files made *about* a release after it was recorded - its data card, an export's manifest, a
measurement - are **attachments** (:func:`attach`): kept under ``<id>/attached/`` with their
sha256 in ``release.json`` and copied to the remote record, never part of what defines the
release (its id and ``files`` stay as they were).

The record is kept in three places:

* the project's registry ``.cmrops/releases/<id>/`` (this machine);
* the DVC remote, under ``cmrops/releases/<id>/`` beside DVC's own ``files/`` - so any machine
  that can pull the data can list and restore the releases, without git write access;
* git, where the project is a git repository (``release.git`` in params): a commit of the
  release's small files on the current branch and a tag ``release/<id>`` (``commit``, the DVC
  way: ``git checkout release/<id> && dvc pull``), or the tag alone on a commit off the branch
  (``tag``), or nothing (``off``). The user's index and other changes are never touched.

:func:`checkout` restores a release: its record (fetched from the remote when this machine has
none), then ``dvc pull`` of exactly its ``dvc.lock`` (``dvc checkout`` from the cache, missing
objects from the remote), then a check that the workspace matches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cmrops import io

log = logging.getLogger(__name__)

__all__ = [
    "REGISTRY",
    "REMOTE_PREFIX",
    "Release",
    "ReleaseError",
    "ReleaseParams",
    "attach",
    "cache_dir",
    "cache_object",
    "checkout",
    "create",
    "find",
    "list_releases",
    "recorded_files",
    "release_dir",
]

#: The project's own registry (git- and DVC-ignored).
REGISTRY = ".cmrops/releases"
#: The registry's folder inside the DVC remote.
REMOTE_PREFIX = "cmrops/releases"
RECORD = "release.json"
#: What defines a release besides its outputs.
DEFINITION = ("dvc.lock", "dvc.yaml", "params.yaml")
TAG_PREFIX = "release/"
#: Attachments live under this folder of a record.
ATTACHED = "attached"


class ReleaseError(ValueError):
    """No such release, a damaged record, or a restore that did not match (the message says
    what to do)."""


@dataclass(frozen=True)
class ReleaseParams:
    """The ``release:`` section of params.yaml (how a versioned run is recorded; never a DVC
    param: it does not change what a stage writes)."""

    # commit: the release's small files on the current branch + tag release/<id>;
    # tag: the tag only, on a commit off the branch; off: no git record
    git: Literal["commit", "tag", "off"] = "commit"
    push_tags: bool = False  # git push <remote> release/<id> after tagging (needs write access)
    git_remote: str = "origin"


@dataclass(frozen=True)
class Release:
    """One release record (``release.json``) and where it was read from."""

    id: str
    created: str  # ISO 8601, UTC
    run_id: str | None
    data_version: str | None
    files: dict[str, str]  # relative path -> sha256
    git: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the record's folder on this machine (None: remote only)
    where: tuple[str, ...] = ()  # "local", "remote"
    attachments: dict[str, str] = field(default_factory=dict)  # name -> sha256 (attach())

    def to_json(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "created": self.created,
            "run_id": self.run_id,
            "data_version": self.data_version,
            "files": self.files,
            "git": self.git,
            "summary": self.summary,
        }
        if self.attachments:
            out["attachments"] = self.attachments
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], path: Path | None, where: tuple[str, ...]) -> Release:
        try:
            return cls(
                id=str(d["id"]),
                created=str(d["created"]),
                run_id=d.get("run_id"),
                data_version=d.get("data_version"),
                files={str(k): str(v) for k, v in dict(d["files"]).items()},
                git=d.get("git"),
                summary=dict(d.get("summary") or {}),
                path=path,
                where=where,
                attachments={str(k): str(v) for k, v in dict(d.get("attachments") or {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ReleaseError(f"{path}: not a release record ({e})") from e

    def file(self, rel: str) -> Path:
        """A recorded file of this release on this machine (its metrics, plots, dvc.lock)."""
        if self.path is None or rel not in self.files:
            raise ReleaseError(f"release {self.id} has no local copy of {rel}")
        return self.path / rel

    def output(self, rel: str) -> Path | None:
        """A file of this release on this machine: a recorded one, else an output its
        ``dvc.lock`` names whose object is in the project's DVC cache (None: neither)."""
        if self.path is None:
            return None
        if rel in self.files:
            return self.path / rel
        lock = self.path / "dvc.lock"
        if not lock.is_file():
            return None
        import yaml

        spec = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
        for stage in (spec.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                md5 = str(out.get("md5") or "") if isinstance(out, dict) else ""
                if out.get("path") == rel and md5 and not md5.endswith(".dir"):
                    obj = cache_object(self.path.parents[2], md5)
                    return obj if obj.is_file() else None
        return None

    def read_json(self, rel: str) -> dict[str, Any] | None:
        """A JSON file of this release (:meth:`output`), or None when this machine has none."""
        path = self.output(rel)
        if path is None:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None

    def attachment(self, name: str) -> Path | None:
        """An attached file of this release on this machine (None: not attached)."""
        if self.path is None or name not in self.attachments:
            return None
        return self.path / ATTACHED / name


def cache_dir(project: str | os.PathLike[str]) -> Path:
    """The project's DVC cache: ``cache.dir`` of ``.dvc/config.local`` / ``.dvc/config``, else
    ``.dvc/cache``."""
    import configparser

    root = Path(project)
    for name in ("config.local", "config"):
        p = root / ".dvc" / name
        if not p.is_file():
            continue
        cp = configparser.ConfigParser()
        try:
            cp.read(p)
        except configparser.Error:
            continue
        if cp.has_option("cache", "dir"):
            d = Path(cp.get("cache", "dir"))
            return d if d.is_absolute() else (root / ".dvc" / d).resolve()
    return root / ".dvc" / "cache"


def cache_object(project: str | os.PathLike[str], md5: str) -> Path:
    """Where DVC 3 keeps the object ``md5`` in the project's cache."""
    return cache_dir(project) / "files" / "md5" / md5[:2] / md5[2:]


# --------------------------------------------------------------------------- what is recorded


def recorded_files(project: str | os.PathLike[str]) -> list[str]:
    """The small files of a release: :data:`DEFINITION` and every metrics and plots file that
    ``dvc.yaml`` declares (its stages' and its top-level ones) and that exists."""
    import yaml

    root = Path(project)
    spec = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")) or {}
    paths: list[str] = []

    def add(item: Any) -> None:
        rel = next(iter(item)) if isinstance(item, dict) else str(item)
        target = root / rel
        if target.is_dir():
            paths.extend(
                p.relative_to(root).as_posix() for p in sorted(target.rglob("*")) if p.is_file()
            )
        elif target.is_file():
            paths.append(rel)

    for stage in (spec.get("stages") or {}).values():
        for key in ("metrics", "plots"):
            for item in stage.get(key) or []:
                add(item)
    for item in spec.get("metrics") or []:
        add(item)
    for item in spec.get("plots") or []:
        if isinstance(item, dict):  # top-level plot definitions: {id: {y: {file: field}}}
            ((name, conf),) = item.items()
            ys = (conf or {}).get("y")
            files = list(ys) if isinstance(ys, dict) else [name]
            for f in files:
                add(f)
        else:
            add(item)
    paths += [rel for rel in DEFINITION if (root / rel).is_file()]
    return sorted(set(paths))


def _sha256(path: Path) -> str:
    return io.sha256_file(path)


def release_dir(project: str | os.PathLike[str], release_id: str) -> Path:
    return Path(project) / REGISTRY / release_id


# --------------------------------------------------------------------------- create


def _now_iso() -> str:
    """UTC now with milliseconds: releases made within one second still sort by creation."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def new_id(project: str | os.PathLike[str], now: float | None = None) -> str:
    lock = Path(project) / "dvc.lock"
    if not lock.is_file():
        raise ReleaseError(f"{project}: no dvc.lock - nothing was versioned (dvc commit) yet")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now if now is not None else time.time()))
    return f"{stamp}-{hashlib.sha256(lock.read_bytes()).hexdigest()[:8]}"


def create(
    project: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    remote: str | None = None,
    params: ReleaseParams | None = None,
    summary: dict[str, Any] | None = None,
) -> Release:
    """Record the workspace's versioned state (after ``dvc commit``) as a release: the local
    record, its copy in the DVC remote ``remote`` (default remote when None; skipped when the
    project has none), and the git commit/tag per ``params.git``."""
    from cmrops import runlog

    root = Path(project).resolve()
    params = params or ReleaseParams()
    rid = new_id(root)
    rels = recorded_files(root)
    now = {rel: _sha256(root / rel) for rel in rels}
    for known in reversed(list(_local_records(root).values())):
        if known.files == now:  # this state is a release already (a rerun, a no-op run)
            log.info("release %s already records this workspace", known.id)
            if _has_remote(root, remote):
                _push_record(root, known, remote)
            return known
    folder = release_dir(root, rid)
    staging = folder.with_name(f".{rid}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    hashes: dict[str, str] = {}
    for rel in rels:
        dst = staging / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dst)
        hashes[rel] = _sha256(dst)
    git = _git_record(root, rels, rid, params) if params.git != "off" else None
    release = Release(
        id=rid,
        created=_now_iso(),
        run_id=run_id,
        data_version=runlog.data_version(root),
        files=hashes,
        git=git,
        summary=summary or {},
    )
    io.write_json(staging / RECORD, release.to_json())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)  # the record appears whole or not at all
    release = Release.from_json(release.to_json(), folder, ("local",))
    if _has_remote(root, remote):
        _push_record(root, release, remote)
        release = Release.from_json(release.to_json(), folder, ("local", "remote"))
    log.info("release %s recorded (%d files)", rid, len(hashes))
    return release


# --------------------------------------------------------------------------- list / find


def _local_records(root: Path) -> dict[str, Release]:
    out: dict[str, Release] = {}
    base = root / REGISTRY
    if not base.is_dir():
        return out
    for rec in sorted(base.glob(f"*/{RECORD}")):
        try:
            r = Release.from_json(json.loads(rec.read_text(encoding="utf-8")), rec.parent,
                                  ("local",))  # fmt: skip
        except (ValueError, ReleaseError) as e:
            log.warning("release registry: skipping %s (%s)", rec, e)
            continue
        out[r.id] = r
    return out


def list_releases(
    project: str | os.PathLike[str], remote: str | None = None, include_remote: bool = True
) -> list[Release]:
    """Every release known here or in the DVC remote, oldest first."""
    root = Path(project).resolve()
    found = _local_records(root)
    if include_remote and _has_remote(root, remote):
        for rid, rec in _remote_records(root, remote).items():
            if rid in found:
                found[rid] = Release.from_json(found[rid].to_json(), found[rid].path,
                                               ("local", "remote"))  # fmt: skip
            else:
                found[rid] = rec
    return sorted(found.values(), key=lambda r: (r.created, r.id))


def find(project: str | os.PathLike[str], release_id: str, remote: str | None = None) -> Release:
    """Release ``release_id`` (a unique prefix, or ``latest``) with a verified local copy of its
    record, fetched from the remote when this machine has none."""
    root = Path(project).resolve()
    known = list_releases(root, remote)
    if not known:
        raise ReleaseError(f"{root}: no releases yet (a versioned run records one)")
    if release_id == "latest":
        match = [known[-1]]
    else:
        match = [r for r in known if r.id == release_id] or [
            r for r in known if r.id.startswith(release_id)
        ]
    if len(match) != 1:
        ids = ", ".join(r.id for r in known[-5:])
        what = "matches several" if match else "is not a known release"
        raise ReleaseError(f"{release_id!r} {what} (latest: {ids}); see cmrops release list")
    rel = match[0]
    if rel.path is None:
        rel = _fetch_record(root, rel, remote)
    _verify(rel)
    return rel


def _verify(rel: Release) -> None:
    assert rel.path is not None
    recorded = [(n, d, rel.path / n) for n, d in rel.files.items()]
    recorded += [(n, d, rel.path / ATTACHED / n) for n, d in rel.attachments.items()]
    for name, digest, p in recorded:
        if not p.is_file() or _sha256(p) != digest:
            raise ReleaseError(
                f"release {rel.id}: recorded file {name} is missing or damaged in {rel.path} "
                "(remove that folder to fetch the record from the DVC remote again)"
            )


# --------------------------------------------------------------------------- checkout


def checkout(
    project: str | os.PathLike[str], release_id: str, remote: str | None = None, jobs: int = 4
) -> Release:
    """Restore release ``release_id`` in the workspace: its recorded files, then every output
    its ``dvc.lock`` names (from the cache, or the remote into the cache), then check that
    ``dvc status`` finds the workspace equal to it."""
    from cmrops import versioning

    root = Path(project).resolve()
    rel = find(root, release_id, remote)
    assert rel.path is not None
    for name in rel.files:
        io.write_bytes(root / name, (rel.path / name).read_bytes())
    args = ["pull", "--force", "--jobs", str(jobs), *(["-r", remote] if remote else [])]
    if not _has_remote(root, remote):
        args = ["checkout", "--force"]
    try:
        versioning.dvc(args, root)
    except versioning.VersioningError as e:
        raise ReleaseError(
            f"release {rel.id}: its outputs could not be restored ({e}); is the DVC remote "
            "reachable and does it hold the release (dvc push after the run)?"
        ) from e
    status = json.loads(versioning.dvc(["status", "--json"], root).stdout or "{}")
    if status:
        raise ReleaseError(
            f"release {rel.id}: after the restore the workspace still differs from its "
            f"dvc.lock: {json.dumps(status)[:500]}"
        )
    return rel


# --------------------------------------------------------------------------- attachments


def attach(
    project: str | os.PathLike[str],
    release_id: str,
    files: dict[str, bytes],
    remote: str | None = None,
) -> Release:
    """Attach ``files`` (name -> bytes; names are relative paths such as ``datacard.json`` or
    ``exports/<id>/manifest.json``) to release ``release_id``: written under its record's
    ``attached/`` folder, listed with their sha256 in ``release.json`` (atomically, under a
    lock: two exports may attach at once) and copied to the remote record when there is a
    remote. Re-attaching a name replaces it. What defines the release (its id, ``files``) never
    changes."""
    import fcntl

    root = Path(project).resolve()
    rel = find(root, release_id, remote)
    assert rel.path is not None
    for name in files:
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or name.startswith("."):
            raise ReleaseError(f"attachment name {name!r}: a relative path inside the record")
    with open(rel.path / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = Release.from_json(
            json.loads((rel.path / RECORD).read_text(encoding="utf-8")), rel.path, rel.where
        )
        hashes = dict(current.attachments)
        for name, data in files.items():
            io.write_bytes(rel.path / ATTACHED / name, data)
            hashes[name] = hashlib.sha256(data).hexdigest()
        updated = Release.from_json({**current.to_json(), "attachments": dict(sorted(
            hashes.items()))}, rel.path, rel.where)  # fmt: skip
        io.write_json(rel.path / RECORD, updated.to_json())
    if _has_remote(root, remote):
        _push_record(root, updated, remote, [f"{ATTACHED}/{n}" for n in files])
    return updated


# --------------------------------------------------------------------------- the remote copy


def _has_remote(root: Path, remote: str | None) -> bool:
    from cmrops import versioning

    try:
        versioning.remote_info(root, remote)
    except versioning.VersioningError:
        return False
    return True


def _remote_root(root: Path, remote: str | None) -> tuple[str, str | None]:
    from cmrops import versioning

    info = versioning.remote_info(root, remote)
    url = info.url.rstrip("/")
    return f"{url}/{REMOTE_PREFIX}", info.endpoint


@contextlib.contextmanager
def _endpoint(endpoint: str | None) -> Iterator[None]:
    """The S3 endpoint of the remote for the storage module (which reads the environment)."""
    if not endpoint:
        yield
        return
    before = os.environ.get("CMROPS_S3_ENDPOINT_URL")
    os.environ["CMROPS_S3_ENDPOINT_URL"] = endpoint
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CMROPS_S3_ENDPOINT_URL", None)
        else:
            os.environ["CMROPS_S3_ENDPOINT_URL"] = before


def _push_record(
    root: Path, rel: Release, remote: str | None, only: list[str] | None = None
) -> None:
    """Copy the record to the remote: every file (or just ``only``), release.json last."""
    from cmrops import storage

    assert rel.path is not None
    url, endpoint = _remote_root(root, remote)
    with _endpoint(endpoint):
        # files first, release.json last: a record whose release.json is there is complete
        every = [*rel.files, *(f"{ATTACHED}/{n}" for n in rel.attachments)]
        names = [*(every if only is None else only), RECORD]
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp) / rel.id
            for name in names:
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(rel.path / name, stage / name)
            storage.push(tmp, [f"{rel.id}/{n}" for n in names], url)


def _remote_records(root: Path, remote: str | None) -> dict[str, Release]:
    from cmrops import storage

    url, endpoint = _remote_root(root, remote)
    out: dict[str, Release] = {}
    with _endpoint(endpoint):
        r = storage.parse_root(url)
        try:
            if r.is_local:
                base = Path(r.path)
                texts = {p.parent.name: p.read_text() for p in base.glob(f"*/{RECORD}")}
            else:
                fs = storage._s3fs(endpoint)
                keys = fs.glob(r.join("*") + f"/{RECORD}")
                texts = {Path(k).parent.name: fs.cat_file(k).decode() for k in keys}
        except Exception as e:  # an unreachable remote: list what this machine knows
            log.warning("release registry in the DVC remote (%s) not readable: %s", url, e)
            return out
    for rid, text in texts.items():
        try:
            out[rid] = Release.from_json(json.loads(text), None, ("remote",))
        except (ValueError, ReleaseError) as e:
            log.warning("release registry: skipping remote record %s (%s)", rid, e)
    return out


def _fetch_record(root: Path, rel: Release, remote: str | None) -> Release:
    from cmrops import storage

    url, endpoint = _remote_root(root, remote)
    folder = release_dir(root, rel.id)
    staging = folder.with_name(f".{rel.id}.fetch")
    shutil.rmtree(staging, ignore_errors=True)
    with _endpoint(endpoint):
        storage.pull(url, [rel.id], staging.parent / f".{rel.id}.pull")
    pulled = staging.parent / f".{rel.id}.pull" / rel.id
    if not (pulled / RECORD).is_file():
        raise ReleaseError(f"release {rel.id}: its record could not be fetched from {url}")
    os.replace(pulled, staging)
    shutil.rmtree(staging.parent / f".{rel.id}.pull", ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return Release.from_json(rel.to_json(), folder, ("local", "remote"))


# --------------------------------------------------------------------------- git


def _git(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=root, env={**os.environ, **(env or {})}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode:
        raise ReleaseError(f"git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def _git_record(
    root: Path, rels: list[str], rid: str, params: ReleaseParams
) -> dict[str, Any] | None:
    """Commit ``rels`` (as they are now) with a temporary index, so the user's staged changes
    stay as they were; move the branch (``commit``) or not (``tag``); tag ``release/<id>``."""
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel")).resolve()
    except (ReleaseError, OSError):
        return None  # not a git checkout: the registry alone records the release
    if top != root:
        log.warning("release: %s is inside the git repository %s; no git record", root, top)
        return None
    head = _git_opt(root, "rev-parse", "--verify", "-q", "HEAD")
    branch = _git_opt(root, "symbolic-ref", "-q", "--short", "HEAD")
    ident = {}
    if not _git_opt(root, "config", "user.email"):
        who = {"NAME": "cmrops", "EMAIL": "cmrops@localhost"}
        ident = {f"GIT_{role}_{k}": v for role in ("AUTHOR", "COMMITTER") for k, v in who.items()}
    # DVC's .gitignore files beside the outputs belong with dvc.lock
    extra = sorted(
        p.relative_to(root).as_posix() for p in root.glob("data/**/.gitignore")
        if p.is_file()
    ) + [p for p in ("models/.gitignore", ".gitignore") if (root / p).is_file()]  # fmt: skip
    paths = sorted(set(rels) | set(extra))
    with tempfile.TemporaryDirectory() as tmp:
        env = {**ident, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if head:
            _git(root, "read-tree", head, env=env)
        _git(root, "add", "-f", "--", *paths, env=env)
        tree = _git(root, "write-tree", env=env)
    if head and tree == _git(root, "rev-parse", f"{head}^{{tree}}"):
        commit = head  # the release's files are committed already (a rerun)
    else:
        msg = f"cmrops release {rid}\n\nRecorded by cmrops: dvc.lock, params and metrics."
        commit = _git(root, "commit-tree", tree, *(["-p", head] if head else []), "-m", msg,
                      env=ident)  # fmt: skip
    moved = False
    if params.git == "commit" and branch and commit != head:
        _git(root, "update-ref", f"refs/heads/{branch}", commit, head or "0" * 40)
        # the real index follows the branch for these paths only
        _git(root, "reset", "-q", commit, "--", *paths)
        moved = True
    tag = f"{TAG_PREFIX}{rid}"
    _git(root, "tag", "-f", tag, commit)
    pushed = False
    if params.push_tags:
        try:
            _git(root, "push", params.git_remote, f"refs/tags/{tag}")
            pushed = True
        except ReleaseError as e:
            log.warning("release %s: tag not pushed: %s", rid, e)
    dirty = bool(_git_opt(root, "status", "--porcelain", "--untracked-files=no"))
    return {"commit": commit, "tag": tag, "branch": branch if moved else None,
            "dirty": dirty, "tag_pushed": pushed}  # fmt: skip


def _git_opt(root: Path, *args: str) -> str:
    try:
        return _git(root, *args)
    except ReleaseError:
        return ""
