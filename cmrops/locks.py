"""One copy of a stage at a time per output folder: an advisory file lock the stage holds.

Airflow runs a second copy of a task when it loses the first one's heartbeat (the first may still
be running); a user may start ``cmrops collect`` twice. Stage outputs are written atomically and
deterministically, but a stage also owns scratch space (collect's sort spill, preprocess's shard
inputs, clean's cache) that a second copy would delete or rewrite under the first. So every stage
command takes an exclusive lock named by the stage and its output folder
(``<project>/.cmrops/locks/<stage>-<hash>.lock``, beside the run log): a second copy logs who
holds it, waits, then runs - resuming from (or redoing) what the first wrote, with identical
bytes.

``flock`` locks belong to the open file: the kernel releases them when the holder exits, however
it exits (SIGKILL included), so a lock is never stale. Where ``fcntl`` does not exist (Windows),
stages run unlocked.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["LOCK_DIR", "lock_path", "stage_lock"]

#: Lock files, relative to the project root (git-ignored runtime state, like the run log).
LOCK_DIR = ".cmrops/locks"


def lock_path(project: str | os.PathLike[str], stage: str, output: str | os.PathLike[str]) -> Path:
    """The lock file of ``stage`` writing ``output`` (resolved, so any spelling of the same
    folder gives the same lock)."""
    digest = hashlib.sha256(os.fsencode(Path(output).resolve())).hexdigest()[:12]
    return Path(project) / LOCK_DIR / f"{stage}-{digest}.lock"


@contextlib.contextmanager
def stage_lock(
    project: str | os.PathLike[str], stage: str, output: str | os.PathLike[str]
) -> Iterator[None]:
    """Hold the lock of ``stage`` on ``output`` for the block; wait (logging the holder) while
    another process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = lock_path(project, stage, output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only or full project folder: the stage reports its own error
        log.warning("cannot create the stage lock %s (%s): running without it", path, e)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            log.warning(
                "another `cmrops %s` writes %s (%s): waiting for it to finish, then this one "
                "runs (and rewrites the same bytes)",
                stage, output, holder,
            )  # fmt: skip
            t0 = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            log.info("lock of %s %s acquired after %.1f s", stage, output, time.monotonic() - t0)
        with contextlib.suppress(OSError):  # who holds it, for the message above (a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
