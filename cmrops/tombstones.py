"""Withdrawn samples: the project's tombstone file, ``withdrawn.jsonl`` at the project root.

A withdrawal (a takedown request, a licence change, a consent withdrawn) must outlive every
run, every rescan of the sources and a fresh clone of the project, so it is a small text file
**versioned with the code** (git), not an output: ``collect`` reads it (``collect.withdrawn`` in
params, a dependency of the stage in ``dvc.yaml``, so adding a line reruns the pipeline) and
quarantines every record it matches as ``withdrawn`` before its media is stored, or - for a
match by sample id or media digest, known only once the bytes are read - drops it before the
sample is formed; the store keeps no object that no kept sample refers to, so the media leaves
``data/raw/objects`` in that same run.

One JSON object per line, written by ``cmrops withdraw`` (:mod:`cmrops.withdrawal`), which
resolves what was asked (a sample id, a ``source:key``, a URL) into every identity the sample
has, so that a rescan cannot bring it back under another name::

    {"request": "3fa2c1d04b5e6f70", "kind": "sample", "reason": "takedown request #12",
     "withdrawn_at": "2026-12-07T05:30:12Z", "sample_ids": ["3fa2c1d04b5e6f70"],
     "source_keys": ["web:17:https://example.org/a.jpg"], "urls": ["https://example.org/a.jpg"],
     "media_sha256": ["9f86d0..."]}

A record is withdrawn when any of its identities is listed: its sample id, ``source:key``, its
URL (``url`` or ``final_url``; a URL source never downloads it again) or its media's SHA-256
(the same picture under other captions or from another source).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["FILE", "REASON", "Tombstone", "Tombstones", "append"]

#: The tombstone file, at the project root (tracked by git; a dep of collect in dvc.yaml).
FILE = "withdrawn.jsonl"
#: The quarantine reason of a withdrawn record.
REASON = "withdrawn"

Kind = Literal["sample", "source_key", "url"]


@dataclass(frozen=True)
class Tombstone:
    """One withdrawal: what was asked, why, when, and every identity it covers."""

    request: str
    kind: Kind
    reason: str
    withdrawn_at: str
    sample_ids: tuple[str, ...] = ()
    source_keys: tuple[str, ...] = ()  # "source:key"
    urls: tuple[str, ...] = ()
    media_sha256: tuple[str, ...] = ()
    by: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request": self.request,
            "kind": self.kind,
            "reason": self.reason,
            "withdrawn_at": self.withdrawn_at,
            "sample_ids": list(self.sample_ids),
            "source_keys": list(self.source_keys),
            "urls": list(self.urls),
            "media_sha256": list(self.media_sha256),
        }
        if self.by:
            out["by"] = self.by
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], where: str) -> Tombstone:
        try:
            kind = str(d["kind"])
            if kind not in ("sample", "source_key", "url"):
                raise ValueError(f"kind {kind!r} is not sample, source_key or url")

            def strings(key: str) -> tuple[str, ...]:
                v = d.get(key) or []
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise ValueError(f"{key} must be a list of strings")
                return tuple(v)

            return cls(
                request=str(d["request"]),
                kind=kind,  # type: ignore[arg-type]
                reason=str(d["reason"]),
                withdrawn_at=str(d["withdrawn_at"]),
                sample_ids=strings("sample_ids"),
                source_keys=strings("source_keys"),
                urls=strings("urls"),
                media_sha256=strings("media_sha256"),
                by=str(d["by"]) if d.get("by") else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a tombstone ({e})") from e

    def describe(self) -> str:
        return f"withdrawn {self.withdrawn_at[:10]} ({self.request}): {self.reason}"


@dataclass
class Tombstones:
    """Every tombstone of a file, indexed by identity for collect's checks."""

    entries: list[Tombstone] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by: dict[tuple[str, str], Tombstone] = {}
        for t in self.entries:
            for kind, values in (("sample", t.sample_ids), ("key", t.source_keys),
                                 ("url", t.urls), ("media", t.media_sha256)):  # fmt: skip
                for v in values:
                    self._by.setdefault((kind, v), t)

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> Tombstones:
        """The tombstones of ``path`` (none when it is None or absent). A malformed line is a
        ``ValueError`` naming the file and line: a withdrawal must never be skipped silently."""
        if path is None or not Path(path).is_file():
            return cls()
        entries = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from e
                if not isinstance(d, dict):
                    raise ValueError(f"{path}:{n}: not a JSON object")
                entries.append(Tombstone.from_json(d, f"{path}:{n}"))
        return cls(entries)

    def match(
        self,
        *,
        sample_id: str | None = None,
        source: str | None = None,
        source_key: str | None = None,
        urls: Iterable[str | None] = (),
        media_sha256: str | None = None,
    ) -> Tombstone | None:
        """The tombstone covering a record with these identities, or None."""
        probes: list[tuple[str, str | None]] = [
            ("sample", sample_id),
            ("key", f"{source}:{source_key}" if source is not None and source_key else None),
            ("media", media_sha256),
            *(("url", u) for u in urls),
        ]
        for kind, value in probes:
            if value:
                hit = self._by.get((kind, value))
                if hit is not None:
                    return hit
        return None

    def withdraws_url(self, url: str) -> Tombstone | None:
        return self._by.get(("url", url))


def append(path: str | os.PathLike[str], entries: Iterable[Tombstone]) -> None:
    """Add tombstones to the file (atomically: the old lines, then the new ones)."""
    from cmrops import io

    p = Path(path)
    old = p.read_text(encoding="utf-8") if p.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    new = "".join(json.dumps(t.to_json(), sort_keys=True, ensure_ascii=False) + "\n"
                  for t in entries)  # fmt: skip
    io.write_bytes(p, (old + new).encode("utf-8"))
