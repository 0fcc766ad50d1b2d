"""What every export format's writer shares (:mod:`cmrops.export`): the options that decide an
export's bytes, the progress journal of finished units, and the data card files beside the
data. The writers (:mod:`cmrops.export.webdataset`, ``hf``, ``coco``, ``hashing``) import it, and
:mod:`cmrops.export` re-exports it, so the package and its writers import no circle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Literal

from cmrops import io

__all__ = ["PROGRESS", "ExportError", "ExportOptions", "Progress", "json_bytes", "write_card"]

#: The progress of an unfinished export (removed when the manifest is written): a JSON line
#: of what is exported, then one line per finished unit (appended: a torn last line is ignored).
PROGRESS = ".export-progress.jsonl"


class ExportError(ValueError):
    """The export cannot run as asked (the message says what to do)."""


@dataclass(frozen=True)
class ExportOptions:
    """What, besides the release and the format, decides an export's bytes."""

    splits: tuple[str, ...] = ()  # the sets to export (empty: every set)
    shard_size: int = 1000  # samples per tar shard / rows per Parquet file
    container: Literal["mat", "h5"] = "mat"  # hashing: MATLAB v7.3 .mat or plain .h5
    media: bool = True  # coco: copy the media files beside the JSON

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ExportError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.container not in ("mat", "h5"):
            raise ExportError(f"container must be mat or h5, got {self.container!r}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["splits"] = list(self.splits)
        return d


class Progress:
    """The finished units of an export (name -> sha256, bytes, samples), each appended to the
    progress file as it is renamed into place."""

    def __init__(self, out: Path, header: dict[str, Any], units: dict[str, Any]) -> None:
        self.out, self.header, self.units = out, header, units

    def start(self) -> None:
        text = json.dumps(self.header, sort_keys=True) + "\n"
        io.write_bytes(self.out / PROGRESS, text.encode())

    def save(self, name: str) -> None:
        line = json.dumps({"unit": name, **self.units[name]}, sort_keys=True) + "\n"
        with open(self.out / PROGRESS, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    @staticmethod
    def read(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The header and finished units of a progress file."""
        lines = (out / PROGRESS).read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
        units: dict[str, Any] = {}
        for line in lines[1:]:
            try:
                u = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            units[u.pop("unit")] = u
        return header, units

    def done(self, name: str) -> bool:
        """The unit was finished by an earlier (interrupted) run and is intact."""
        rec = self.units.get(name)
        path = self.out / name
        return rec is not None and path.is_file() and io.sha256_file(path) == rec["sha256"]

    @contextmanager
    def unit(self, name: str, samples: int = 0) -> Iterator[IO[bytes]]:
        """Write unit ``name`` atomically and record it (the caller skips done units)."""
        with io.atomic_output(self.out / name, "wb") as fh:
            yield fh
        self.record(name, samples)

    def record(self, name: str, samples: int = 0) -> None:
        """Record a unit renamed into place."""
        path = self.out / name
        self.units[name] = {"sha256": io.sha256_file(path), "bytes": path.stat().st_size,
                            "samples": samples}  # fmt: skip
        self.save(name)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_card(folder: Path, card: dict[str, Any], progress: Progress, markdown: str) -> None:
    """The data card beside the data: ``datacard.json`` and ``datacard.md`` (every format)."""
    with progress.unit("datacard.json") as fh:
        fh.write(json_bytes(card))
    with progress.unit("datacard.md") as fh:
        fh.write(markdown.encode("utf-8"))
