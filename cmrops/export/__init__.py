"""Export a release: the data set in the layouts other tools read, with its data card.

``export(project, release, fmt, out)`` writes release ``release`` (an id, a unique prefix, or
``latest``) into the folder ``out`` as

* ``webdataset`` - tar shards ``<set>-000000.tar`` ... (:mod:`cmrops.export.webdataset`);
* ``hf`` - a Hugging Face ``datasets`` Parquet folder with ``README.md`` (the dataset card)
  (:mod:`cmrops.export.hf`);
* ``coco`` - ``annotations/captions_<set>.json`` and the media under ``<set>/``
  (:mod:`cmrops.export.coco`);
* ``hashing`` - the cross-modal hashing benchmark layout (``I_tr``/``T_tr``/``L_tr``, ``_te``,
  ``_db``) in a MATLAB v7.3 ``.mat`` or ``.h5`` file, what ``cmrops import-benchmark`` reads
  (:mod:`cmrops.export.hashing`).

**What is read.** The release's own outputs by the hashes of its ``dvc.lock``, from the DVC
cache (or the remote): :class:`cmrops.release_data.ReleaseData`. The workspace is never read
nor restored, so an export of any release runs beside a scheduled run, bit for bit the same.

**Every export is resumable and never mistaken for a finished one.** Units (a shard, a Parquet
file, a set's JSON) are written to a temporary file and renamed when whole; a progress file
``.export-progress.jsonl`` records each finished unit's sha256, so ``--resume`` skips them; the
manifest ``export.json`` (release id, format, options, every file's sha256 and size, the sample
count per set and the sha256 of the sorted sample-id list) is written **last**: a folder
without it is an unfinished export. A non-empty folder is refused unless ``resume`` (the same
release, format and options only) or ``force`` (its content is replaced).

**Deterministic.** The same release, format and options give the same bytes: samples in
``sample_id`` order, tar members with fixed owner, mode and mtime (the release's time), Parquet
without wall-clock metadata. Only ``export.json`` carries when and where it was made.

**Recorded.** Each finished export is attached to the release's record
(``exports/<export id>/manifest.json`` and ``samples.txt``, :func:`cmrops.releases.attach`), so
``cmrops withdraw --impact`` finds every export that holds a sample.

**Memory** holds one batch of sample rows and one sample's media (Parquet: one row group of
``ROW_GROUP`` rows), whatever the data set's size; the hashing layout streams its arrays in row
blocks into HDF5.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cmrops import io
from cmrops.export.base import PROGRESS as PROGRESS
from cmrops.export.base import ExportError as ExportError
from cmrops.export.base import ExportOptions as ExportOptions
from cmrops.export.base import Progress as Progress
from cmrops.export.base import json_bytes as _json_bytes
from cmrops.export.base import write_card as write_card

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "MANIFEST", "PROGRESS", "ExportError", "ExportOptions", "export"]

Format = Literal["webdataset", "hf", "coco", "hashing"]
FORMATS: tuple[str, ...] = ("webdataset", "hf", "coco", "hashing")
#: Written last: a folder without it holds no finished export.
MANIFEST = "export.json"
#: Where a release's record keeps its exports (attachments).
RECORDS = "exports"


#: A format's writer: (samples, out folder, progress, options, card, release time) -> facts.
Writer = Callable[..., dict[str, Any]]


def _writer(fmt: str) -> Writer:
    if fmt == "webdataset":
        from cmrops.export.webdataset import write
    elif fmt == "hf":
        from cmrops.export.hf import write
    elif fmt == "coco":
        from cmrops.export.coco import write
    elif fmt == "hashing":
        from cmrops.export.hashing import write
    else:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    return write


def export(
    project: str | os.PathLike[str],
    release_id: str,
    fmt: str,
    out: str | os.PathLike[str],
    *,
    options: ExportOptions | None = None,
    force: bool = False,
    resume: bool = False,
    remote: str | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """Export release ``release_id`` as ``fmt`` into ``out`` (see the module docstring);
    returns the manifest. ``record=False`` leaves the release record alone (a benchmark's
    throw-away exports)."""
    from cmrops import datacard, releases
    from cmrops.export.stream import ReleaseSamples
    from cmrops.release_data import ReleaseData

    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if force and resume:
        raise ExportError("give --force (start over) or --resume (finish), not both")
    options = options or ExportOptions()
    root = Path(project).resolve()
    rel = releases.find(root, release_id, remote)
    folder = Path(out).resolve()
    header = {"release": rel.id, "format": fmt, "options": options.to_json()}
    progress = _prepare(folder, header, force, resume)
    if isinstance(progress, dict):  # --resume of a finished, identical export
        log.info("export of %s as %s in %s is complete already", rel.id, fmt, folder)
        return progress
    t0 = time.perf_counter()
    data = ReleaseData(root, rel, remote)
    samples = ReleaseSamples(data, options.splits)
    card = datacard.for_release(root, rel, remote)
    facts = _writer(fmt)(samples, folder, progress, options, card, _release_time(rel))
    files = _files(folder, progress.units)
    ids = facts.pop("sample_ids")
    manifest = {
        "export_id": _export_id(rel.id, fmt, options, folder),
        "release": rel.id,
        "release_created": rel.created,
        "data_version": rel.data_version,
        "format": fmt,
        "options": options.to_json(),
        "path": str(folder),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - t0, 3),
        "samples": len(ids),
        "sets": facts.pop("sets"),
        "samples_sha256": hashlib.sha256("".join(f"{s}\n" for s in ids).encode()).hexdigest(),
        "files": files,
        "bytes": sum(f["bytes"] for f in files.values()),
        **facts,
    }
    io.write_json(folder / MANIFEST, manifest)  # last: the export is finished from here on
    (folder / PROGRESS).unlink(missing_ok=True)
    if record:
        name = f"{RECORDS}/{manifest['export_id']}"
        releases.attach(root, rel.id, {
            f"{name}/manifest.json": _json_bytes(manifest),
            f"{name}/samples.txt": "".join(f"{s}\n" for s in ids).encode(),
        }, remote)  # fmt: skip
    log.info("exported %d samples of release %s as %s into %s (%d files, %d bytes)",
             len(ids), rel.id, fmt, folder, len(files), manifest["bytes"])  # fmt: skip
    return manifest


def _prepare(
    folder: Path, header: dict[str, Any], force: bool, resume: bool
) -> Progress | dict[str, Any]:
    """The progress to continue, after checking the folder; or the manifest of an identical
    finished export when resuming one."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} is a file, not a folder")
    manifest = folder / MANIFEST
    state = folder / PROGRESS
    if entries and force:
        for p in entries:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        entries = []
    if entries and resume:
        if manifest.is_file():
            done = json.loads(manifest.read_text(encoding="utf-8"))
            _same(folder, header, done, "a finished export")
            return dict(done)
        if not state.is_file():
            raise ExportError(
                f"{folder} holds no export to resume (no {PROGRESS}, no {MANIFEST}); choose an "
                "empty folder, or --force to replace its content"
            )
        prior, units = Progress.read(folder)
        _same(folder, header, prior, "the unfinished export")
        return Progress(folder, header, units)
    if entries:
        if manifest.is_file():
            what = "a finished export"
        elif state.is_file():
            what = "an unfinished export (--resume finishes it)"
        else:
            what = f"{len(entries)} entries"
        raise ExportError(
            f"{folder} is not empty ({what}); choose an empty folder, --resume an unfinished "
            "export of the same release and format, or --force to replace its content"
        )
    folder.mkdir(parents=True, exist_ok=True)
    progress = Progress(folder, header, {})
    progress.start()
    return progress


def _same(folder: Path, header: dict[str, Any], prior: dict[str, Any], what: str) -> None:
    diff = [k for k in header if prior.get(k) != header[k]]
    if diff:
        got = ", ".join(f"{k} {prior.get(k)!r}" for k in diff)
        raise ExportError(
            f"{folder} holds {what} of another kind ({got}); --resume continues only the same "
            "release, format and options: use another folder, or --force to start over"
        )


def _files(folder: Path, units: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of the export (units as recorded when written)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and rel not in (MANIFEST, PROGRESS) and not p.name.startswith("."):
            size = p.stat().st_size
            known = units.get(rel)
            if known is not None and known["bytes"] == size:
                out[rel] = {"sha256": known["sha256"], "bytes": size}
            else:
                out[rel] = {"sha256": io.sha256_file(p), "bytes": size}
    return out


def _export_id(release: str, fmt: str, options: ExportOptions, folder: Path) -> str:
    text = json.dumps([release, fmt, options.to_json(), str(folder)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _release_time(rel: Any) -> int:
    """The release's creation time in whole seconds: the mtime of every tar member.

    Records carry ISO-8601 UTC stamps, with milliseconds since they sort by creation
    (``2026-12-07T13:33:42.948Z``) and without them before. A record without a readable
    stamp (hand-edited) gets the epoch, so the bytes stay a function of the release alone.
    """
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(str(rel.created))
    except ValueError:
        log.warning("release %s: created %r is not an ISO-8601 time; tar members get mtime 0",
                    getattr(rel, "id", "?"), rel.created)
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def list_exports(
    project: str | os.PathLike[str], remote: str | None = None
) -> list[dict[str, Any]]:
    """Every recorded export of every release (their manifests), oldest release first."""
    from cmrops import releases

    out = []
    for r in releases.list_releases(project, remote):
        try:
            rel = releases.find(project, r.id, remote)
        except releases.ReleaseError as e:
            log.warning("exports of %s not readable: %s", r.id, e)
            continue
        for name in sorted(rel.attachments):
            if name.startswith(f"{RECORDS}/") and name.endswith("/manifest.json"):
                path = rel.attachment(name)
                if path is not None:
                    out.append(json.loads(path.read_text(encoding="utf-8")))
    return out
