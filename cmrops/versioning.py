"""DVC helpers: configure the remote, record stage outputs, push and pull.

Every call runs the ``dvc`` of this interpreter (``python -m dvc``) in the repository folder, so
the same code serves the Airflow DAG's last task, the main job and the tests (which work on a
temporary copy, never on the checkout's own data).

The committed ``.dvc/config`` names the default remote (a local folder). An S3/MinIO remote is
added with :func:`configure_remote`: its URL may be committed, but its endpoint and credentials
go to ``.dvc/config.local`` (``dvc remote modify --local``) or the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) - never to a committed file; credentials
written into a URL (``http://KEY:SECRET@host:9000``) are split off into ``config.local``.

Every remote is verified on pull (``verify = true``, committed for the default remote, set by
:func:`configure_remote` for the others): DVC rehashes each file it downloads and refuses one
whose content does not match its name, so a bit flipped in the remote never reaches the
workspace. dvc commands wait for each other (``--wait-for-lock``) instead of failing when two
run at once (two copies of the last Airflow task), and dvc's messages are shown with URL
credentials masked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmrops.redaction import redact, split_credentials

__all__ = [
    "Changes",
    "RemoteInfo",
    "VersioningError",
    "changes_since_versioned",
    "commit",
    "commit_and_push",
    "configure_remote",
    "dvc",
    "ensure_remote_bucket",
    "pull",
    "push",
    "remote_info",
]

#: Extra environment for every dvc call: no analytics, no update check, no prompts.
_ENV = {"DVC_NO_ANALYTICS": "1", "DVC_UPDATER_ENDPOINT": "", "DVC_IGNORE_ISATTY": "true"}


#: A progress-bar line in dvc's output (``50%|...``, ``3.00 [00:01, 2.1file/s]``, a lone ``!``).
_PROGRESS = re.compile(r"%\||/s\]|^\s*!\s*$")


class VersioningError(RuntimeError):
    """A dvc command failed; the message names the command and dvc's own error lines."""


def dvc(
    args: list[str], repo: str | os.PathLike[str] = ".", check: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """Run ``dvc ARGS`` in ``repo``; raise :class:`VersioningError` (dvc's error) on failure."""
    env = {**os.environ, **_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        lines = [
            ln
            for ln in (proc.stderr + proc.stdout).splitlines()
            if ln.strip() and not _PROGRESS.search(ln)
        ]
        first = next((i for i, ln in enumerate(lines) if "ERROR" in ln), None)
        # the ERROR line and what dvc lists under it (the targets that failed), or the tail
        errors = lines[first : first + 8] if first is not None else lines[-5:]
        raise VersioningError(
            redact(f"dvc {' '.join(args)} failed (exit {proc.returncode}): " + " | ".join(errors))
        )
    return proc


@dataclass(frozen=True)
class RemoteInfo:
    name: str
    url: str
    endpoint: str | None
    access_key: str | None = None  # the remote's own keys (config.local), if it has any
    secret_key: str | None = field(default=None, repr=False)


def remote_info(repo: str | os.PathLike[str] = ".", name: str | None = None) -> RemoteInfo:
    """The remote ``name`` (default: the default remote) as merged from every config level."""
    from dvc.repo import Repo

    with Repo(os.fspath(repo)) as r:
        conf: dict[str, Any] = r.config
        name = name or conf["core"].get("remote")
        if not name:
            raise VersioningError(f"{repo}: no default DVC remote (dvc remote add -d NAME URL)")
        remotes = conf.get("remote", {})
        if name not in remotes:
            raise VersioningError(f"{repo}: no DVC remote named {name!r} ({', '.join(remotes)})")
        section = remotes[name]
        url = section["url"]
        if "://" not in url and not os.path.isabs(url):  # relative to .dvc/
            url = str((Path(repo) / ".dvc" / url).resolve())
        return RemoteInfo(
            name,
            url,
            section.get("endpointurl"),
            section.get("access_key_id"),
            section.get("secret_access_key"),
        )


#: URL schemes whose DVC remotes take ``user`` / ``password`` options.
_USER_PASSWORD_SCHEMES = frozenset({"http", "https", "webdav", "webdavs", "ssh"})


def configure_remote(
    repo: str | os.PathLike[str],
    name: str,
    url: str,
    endpoint: str | None = None,
    default: bool = False,
    local: bool = False,
) -> None:
    """Add (or replace) remote ``name``, verified on pull (``verify = true``). Its ``endpoint``
    is only ever written with ``--local``; credentials in ``endpoint`` become the remote's
    ``access_key_id`` / ``secret_access_key`` and those in ``url`` its ``user`` / ``password``,
    both in ``config.local`` only."""
    from urllib.parse import urlsplit

    level = ["--local"] if local else []
    bare_url, user, password = split_credentials(url)
    if user is not None and urlsplit(bare_url).scheme not in _USER_PASSWORD_SCHEMES:
        raise ValueError(
            f"{redact(url)}: a {urlsplit(bare_url).scheme or 'local'} remote takes no credentials "
            "in its URL; give them in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        )
    dvc(["remote", "add", "--force", *level, *(["-d"] if default else []), name, bare_url], repo)
    dvc(["remote", "modify", *level, name, "verify", "true"], repo)
    secrets: list[tuple[str, str]] = []
    if user is not None:
        secrets += [("user", user), *([("password", password)] if password is not None else [])]
        if urlsplit(bare_url).scheme in ("http", "https"):
            secrets.append(("auth", "basic"))
    if endpoint:
        bare_endpoint, key, secret = split_credentials(endpoint)
        secrets.append(("endpointurl", bare_endpoint))
        if key is not None:
            secrets.append(("access_key_id", key))
        if secret is not None:
            secrets.append(("secret_access_key", secret))
    for option, value in secrets:
        dvc(["remote", "modify", "--local", name, option, value], repo)


def ensure_remote_bucket(repo: str | os.PathLike[str] = ".", name: str | None = None) -> bool:
    """Create the S3 bucket of remote ``name`` when missing (minio SDK). False for a local remote
    or an existing bucket."""
    from urllib.parse import urlparse

    from cmrops.storage import ensure_bucket

    info = remote_info(repo, name)
    u = urlparse(info.url)
    if u.scheme != "s3":
        return False
    return ensure_bucket(u.netloc, info.endpoint, info.access_key, info.secret_key)


def commit(repo: str | os.PathLike[str] = ".", targets: list[str] | None = None) -> None:
    """Record the current outputs of the dvc.yaml stages in dvc.lock and the cache
    (``dvc commit --force``): what a run produced outside ``dvc repro`` (an Airflow run)."""
    dvc(["commit", "--force", *(targets or [])], repo)


def push(repo: str | os.PathLike[str] = ".", remote: str | None = None, jobs: int = 4) -> str:
    """``dvc push``; resumable: a rerun sends only the objects the remote lacks."""
    try:
        ensure_remote_bucket(repo, remote)
    except Exception as e:  # unreachable server: let dvc push report it with its own words too
        raise VersioningError(
            f"DVC remote {remote or '(default)'} is not reachable: {redact(str(e))}. Start the "
            "object store (or fix its endpoint) and rerun; the push resumes where it stopped."
        ) from e
    try:
        proc = dvc(["push", "--jobs", str(jobs), *(["-r", remote] if remote else [])], repo)
    except VersioningError as e:
        raise VersioningError(
            f"{e}. The remote may be down or unreachable; rerun once it is back - the push "
            "resumes (objects already sent are skipped)."
        ) from e
    return proc.stdout.strip()


def pull(
    repo: str | os.PathLike[str] = ".",
    remote: str | None = None,
    jobs: int = 4,
    targets: list[str] | None = None,
) -> str:
    """``dvc pull`` (of ``targets``: stages or outputs; default all). Every file is verified
    against its hash: one missing from the remote or damaged there is not checked out, and the
    error says so."""
    try:
        proc = dvc(
            ["pull", "--jobs", str(jobs), *(["-r", remote] if remote else []), *(targets or [])],
            repo,
        )
    except VersioningError as e:
        if "Missing cache files" not in str(e) and "Checkout failed" not in str(e):
            raise
        raise VersioningError(
            f"{e}. Files missing from the remote, or whose remote copy does not match its hash "
            "(damaged: pulls are verified), were not checked out; push them again from a "
            "workspace that has them, then pull."
        ) from e
    return proc.stdout.strip()


def commit_and_push(
    repo: str | os.PathLike[str] = ".", remote: str | None = None, jobs: int = 4
) -> str:
    """What a pipeline run ends with: record the outputs, then push them to the remote."""
    commit(repo)
    return push(repo, remote, jobs)


# --------------------------------------------------------------------------- incremental runs

#: The table whose sample ids tell what a run added (collect's output).
RAW_SAMPLES = "data/raw/samples.parquet"


@dataclass(frozen=True)
class Changes:
    """How the workspace differs from the last versioned run (``dvc.lock``)."""

    versioned: bool  # dvc.lock exists: some run was versioned
    up_to_date: bool  # every stage's deps and outs match dvc.lock: a run has nothing to do
    stages: tuple[str, ...]  # the stages dvc status reports changed
    new_samples: int | None  # raw sample ids not in the versioned raw table (None: unknown)
    removed_samples: int | None

    def describe(self) -> str:
        if not self.versioned:
            return "no versioned run yet (no dvc.lock): every stage runs"
        if self.up_to_date:
            return "nothing new since the last versioned run: every output matches dvc.lock"
        counts = (
            f"{self.new_samples} new and {self.removed_samples} removed sample(s)"
            if self.new_samples is not None
            else "sample counts unknown (the versioned raw table is not in the DVC cache)"
        )
        return f"changed since the last versioned run: {counts}; stages {', '.join(self.stages)}"


def changes_since_versioned(repo: str | os.PathLike[str] = ".") -> Changes:
    """Compare the workspace with ``dvc.lock`` (``dvc status``) and count the raw samples added
    and removed since the versioned run (sample ids are content hashes, so this is exact)."""
    import json

    import yaml

    root = Path(repo)
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return Changes(False, False, (), None, None)
    status = json.loads(dvc(["status", "--json"], root).stdout or "{}")
    stages = tuple(sorted(k for k in status if not k.startswith(".")))
    lock = yaml.safe_load(lock_path.read_text()) or {}
    new = removed = None
    versioned_raw = _locked_file(root, lock, RAW_SAMPLES)
    current_raw = root / RAW_SAMPLES
    if versioned_raw is not None and current_raw.is_file():
        before, now = _sample_ids(versioned_raw), _sample_ids(current_raw)
        new, removed = len(now - before), len(before - now)
    return Changes(True, not status, stages, new, removed)


def _locked_file(root: Path, lock: dict[str, Any], rel: str) -> Path | None:
    """The cached copy of output ``rel`` as dvc.lock records it (None: not in the local cache)."""
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") == rel and out.get("md5"):
                md5 = str(out["md5"])
                path = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
                return path if path.is_file() else None
    return None


def _sample_ids(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_table(path, columns=["sample_id"]).column(0).to_pylist())
