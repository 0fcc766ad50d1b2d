"""How cmrops reports what went wrong: one line a user can act on, never a secret.

A low module (standard library and :mod:`cmrops.redaction` only) that every layer may import:

* :class:`NothingKeptError` - a stage that would hand zero samples to the next one fails with the
  quarantine counts by reason (a ``ValueError``: the CLI prints it as one line, exit code 2).
* :func:`os_error_line` - an ``OSError`` (a full disk above all) as one line naming the path and
  what to do (the writers of :mod:`cmrops.io` and :mod:`cmrops.cas` attach the path).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping
from typing import Final

from cmrops.redaction import redact

__all__ = ["NothingKeptError", "os_error_line"]


class NothingKeptError(ValueError):
    """A stage kept no sample: every input was quarantined (or there was none)."""

    def __init__(
        self,
        stage: str,
        inputs: int,
        by_reason: Mapping[str, int],
        examples: Mapping[str, str] | None = None,
    ) -> None:
        self.stage, self.inputs, self.by_reason = stage, inputs, dict(by_reason)
        if inputs == 0:
            msg = f"{stage}: no input samples, nothing to pass on"
        else:
            counts = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items(), key=_by_count))
            msg = f"{stage} kept no sample: all {inputs} inputs were quarantined ({counts})"
            shown = [(r, d) for r, d in (examples or {}).items() if d][:3]
            if shown:
                msg += "; e.g. " + "; ".join(f"{r}: {_short(d)}" for r, d in shown)
        super().__init__(redact(msg))


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return -item[1], item[0]


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: What to do, by errno.
_ADVICE: Final = {
    errno.ENOSPC: "free space on that file system (df -h), then rerun the same command: it "
    "resumes and rewrites nothing that is complete",
    errno.EDQUOT: "free space or raise the disk quota, then rerun the same command: it resumes",
    errno.EFBIG: "the file system (or ulimit -f) refuses a file this large: write the outputs "
    "to another file system or lift the limit, then rerun",
    errno.EROFS: "the file system is read-only: remount it writable or write elsewhere, then rerun",
    errno.EIO: "the device reported an I/O error: check the disk (dmesg), then rerun",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n), then rerun",
    errno.ENFILE: "the system is out of file handles: close other programs, then rerun",
    errno.ENOMEM: "out of memory: free memory or lower the batch size / workers, then rerun",
}


def os_error_line(exc: OSError, fallback_path: str | os.PathLike[str] | None = None) -> str:
    """One line: what failed, on which path, and what to do. Looks through the exception's chain
    for the errno and the path (pyarrow and ``__exit__`` paths may raise a copy without them)."""
    code, path = exc.errno, exc.filename
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError):
            code = code if code is not None else e.errno
            path = path if path is not None else e.filename
    if code is None:  # pyarrow's OSError carries it in its text only
        code = next((c for c in map(_errno_in, map(str, chain)) if c is not None), None)
    where = os.fspath(path) if path is not None else fallback_path
    what = os.strerror(code) if code else (exc.strerror or str(exc) or type(exc).__name__)
    line = what + (f": {os.fspath(where)}" if where is not None else "")
    advice = _ADVICE.get(code or -1, "fix the cause, then rerun the same command")
    return redact(f"{line} - {advice}")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen and len(seen) < 16:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


_ERRNO_TEXT: Final = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)


def _errno_in(text: str) -> int | None:
    """The errno in a message such as pyarrow's ``... Detail: [errno 28] No space left``."""
    m = _ERRNO_TEXT.search(text)
    return int(m.group(1)) if m else None
