"""A content-addressed store of image bytes: ``<root>/<sha[:2]>/<sha>``.

Objects are written to a temporary file in the store and renamed into place, so a reader (or a
rerun after a kill) sees either a whole object or none; an object already present is not written
again, so the same image under two names is stored once. Objects are not fsynced one by one
(thousands of small files); instead a present object whose size differs from the bytes being
stored is treated as damaged and rewritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_TMP_PREFIX = ".incoming-"


class TooLargeError(ValueError):
    """The file is larger than the store was told to accept."""


@dataclass(frozen=True)
class StoredObject:
    """Where and what: hex digest, path relative to the store's parent, size in bytes."""

    sha256: str
    relpath: str
    size: int


class ObjectStore:
    """Content-addressed files under ``root`` (typically ``<out>/objects``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def relpath(self, sha: str) -> str:
        """Path of object ``sha`` relative to the store's parent (``objects/ab/ab...``)."""
        return f"{self.root.name}/{sha[:2]}/{sha}"

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def put_bytes(self, data: bytes) -> StoredObject:
        """Store ``data`` (no-op when an object with its digest is present)."""
        sha = hashlib.sha256(data).hexdigest()
        if not self._present(sha, len(data)):
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
            with self._cleanup(tmp):
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                self._commit(tmp, sha)
        return StoredObject(sha, self.relpath(sha), len(data))

    def put_file(self, src: Path, max_bytes: int) -> StoredObject:
        """Copy ``src`` into the store while hashing it (one read, bounded memory).

        Raises :class:`TooLargeError` past ``max_bytes`` and ``OSError`` when ``src`` cannot be
        read; nothing is left behind in either case.
        """
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        with self._cleanup(tmp):
            with os.fdopen(fd, "wb") as out, src.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    size += len(block)
                    if size > max_bytes:
                        raise TooLargeError(f"{src} is larger than {max_bytes} bytes")
                    h.update(block)
                    out.write(block)
            sha = h.hexdigest()
            if not self._present(sha, size):
                self._commit(tmp, sha)
        return StoredObject(sha, self.relpath(sha), size)

    def sweep_temporary(self) -> int:
        """Delete temporary files a killed run left in the store; return how many."""
        n = 0
        for p in self.root.glob(f"{_TMP_PREFIX}*"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                n += 1
        return n

    def prune(self, keep: set[str]) -> int:
        """Delete objects whose digest is not in ``keep`` (and emptied folders); return count."""
        n = 0
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for obj in sub.iterdir():
                if obj.name not in keep:
                    obj.unlink()
                    n += 1
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when empty
        return n

    def _present(self, sha: str, size: int) -> bool:
        try:
            return self.path(sha).stat().st_size == size
        except FileNotFoundError:
            return False

    def _commit(self, tmp: str, sha: str) -> None:
        final = self.path(sha)
        final.parent.mkdir(exist_ok=True)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; objects are plain readable data
        os.replace(tmp, final)

    @staticmethod
    @contextlib.contextmanager
    def _cleanup(tmp: str) -> Iterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
