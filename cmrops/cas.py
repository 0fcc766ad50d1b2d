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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_TMP_PREFIX = ".incoming-"


class TooLargeError(ValueError):
    """The file is larger than the store was told to accept."""


class StoreWriteError(OSError):
    """The store itself could not be written (a full disk, a read-only or failing device): never
    a fault of the input being stored. ``filename`` is the object (or the store) being written."""

    @classmethod
    def of(cls, exc: OSError, path: str | os.PathLike[str]) -> StoreWriteError:
        return cls(exc.errno, exc.strerror or str(exc), os.fspath(path))


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
        """Store ``data`` (no-op when an object with its digest is present). A failed write (a
        full disk) raises :class:`StoreWriteError` naming the object; nothing is left behind."""
        sha = hashlib.sha256(data).hexdigest()
        if not self._present(sha, len(data)):
            target = self.path(sha)
            fd, tmp = self._temporary(target)
            with self._cleanup(tmp):
                self._write(fd, [data], target)
                self._commit(tmp, sha)
        return StoredObject(sha, self.relpath(sha), len(data))

    def put_file(self, src: Path, max_bytes: int) -> StoredObject:
        """Copy ``src`` into the store while hashing it (one read, bounded memory).

        Raises :class:`TooLargeError` past ``max_bytes`` and ``OSError`` when ``src`` cannot be
        read; :class:`StoreWriteError` (an ``OSError`` too) when the store cannot be written -
        the caller must not mistake a full disk for an unreadable input. Nothing is left behind.
        """
        h = hashlib.sha256()
        size = 0

        def blocks() -> Iterator[bytes]:
            nonlocal size
            with src.open("rb") as fh:
                while block := fh.read(_CHUNK):
                    size += len(block)
                    if size > max_bytes:
                        raise TooLargeError(f"{src} is larger than {max_bytes} bytes")
                    h.update(block)
                    yield block

        fd, tmp = self._temporary(self.root)
        with self._cleanup(tmp):
            self._write(fd, blocks(), self.root)
            sha = h.hexdigest()
            if not self._present(sha, size):
                self._commit(tmp, sha)
        return StoredObject(sha, self.relpath(sha), size)

    def _temporary(self, target: Path) -> tuple[int, str]:
        try:
            return tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        except OSError as e:
            raise StoreWriteError.of(e, target) from e

    @staticmethod
    def _write(fd: int, chunks: Iterable[bytes], target: Path) -> None:
        """Write every chunk to ``fd`` unbuffered (so closing has nothing left to flush) and
        close it, also on error. Errors of ``os.write``/``os.close`` - the store's side - become
        :class:`StoreWriteError`; anything ``chunks`` raises (reading the input) passes as is."""
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except OSError as e:
                        raise StoreWriteError.of(e, target) from e
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        try:
            os.close(fd)
        except OSError as e:
            raise StoreWriteError.of(e, target) from e

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
        try:
            final.parent.mkdir(exist_ok=True)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; objects are plain readable data
            os.replace(tmp, final)
        except OSError as e:
            raise StoreWriteError.of(e, final) from e

    @staticmethod
    @contextlib.contextmanager
    def _cleanup(tmp: str) -> Iterator[None]:
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
