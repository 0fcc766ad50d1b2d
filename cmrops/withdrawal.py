"""Withdraw a sample everywhere: record the tombstone, take its media out of the workspace, and
list every release, export, model and code file that holds it.

``withdraw(project, ["3fa2c1d04b5e6f70", "web:17:https://...", "https://..."], reason)``:

1. **resolves** each request - a sample id (16 hex characters), a ``source:key`` (as in the
   quarantine and samples tables) or a URL - against the workspace's collected samples and
   quarantine rows and every release's (read by hash, :class:`cmrops.release_data.ReleaseData`),
   into every identity the sample has:
   its sample id(s), ``source:key``, URL(s) and media SHA-256 (a URL that failed to download is
   found by its quarantine row). A request that matches nothing is
   an error naming it, and nothing is written (all requests or none);
2. **appends** one tombstone per request to the project's tombstone file (``withdrawn.jsonl``,
   :mod:`cmrops.tombstones`; keep it in git), which ``collect`` honours from the next run on;
3. **removes** the media from the workspace's content-addressed store (``data/raw/objects``) at
   once; the next run's collect quarantines the sample as ``withdrawn`` and every later stage,
   the models, the codes and the release are rebuilt without it.

``impact(project, request)`` says exactly where a sample still is: per release, whether it was
collected, kept or quarantined by clean (and why), its set, whether each model was fitted or
selected on it (``data/codes/training_samples.parquet``), which code files hold its codes
(``data/codes/rows.parquet``), and which recorded exports of that release hold it (their
``samples.txt``); and the same for the workspace. A sample matched by its media is reported
under every sample id that shares the media.

Older releases keep the sample: they are history, restorable bit for bit (``dvc gc`` or the
remote's own deletion removes their objects when the law requires it; the impact list says
which releases those are).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from cmrops import io, tombstones
from cmrops.tombstones import Tombstone

log = logging.getLogger(__name__)

__all__ = ["WithdrawalError", "impact", "withdraw"]

_SAMPLE_ID = re.compile(r"^[0-9a-f]{16}$")
RAW_SAMPLES = "data/raw/samples.parquet"
RAW_QUARANTINE = "data/raw/quarantine.parquet"
_COLS = ["sample_id", "source", "source_key", "image_sha256", "extra"]


class WithdrawalError(ValueError):
    """A request names nothing known, or the tombstone file is unusable."""


@dataclass
class Identities:
    """Every name a withdrawn sample goes by."""

    sample_ids: set[str] = field(default_factory=set)
    source_keys: set[str] = field(default_factory=set)
    urls: set[str] = field(default_factory=set)
    media: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.sample_ids or self.source_keys or self.urls or self.media)

    def add_row(self, r: dict[str, Any]) -> None:
        if r.get("sample_id"):
            self.sample_ids.add(r["sample_id"])
        if r.get("source") is not None and r.get("source_key"):
            self.source_keys.add(f"{r['source']}:{r['source_key']}")
        if r.get("image_sha256"):
            self.media.add(r["image_sha256"])
        self.urls |= _urls(r)

    def matches(self, r: dict[str, Any]) -> bool:
        return bool(
            (r.get("sample_id") and r["sample_id"] in self.sample_ids)
            or (r.get("source_key") and f"{r['source']}:{r['source_key']}" in self.source_keys)
            or (r.get("image_sha256") and r["image_sha256"] in self.media)
            or (_urls(r) & self.urls)
        )

    def to_json(self) -> dict[str, list[str]]:
        return {"sample_ids": sorted(self.sample_ids), "source_keys": sorted(self.source_keys),
                "urls": sorted(self.urls), "media_sha256": sorted(self.media)}  # fmt: skip


def _urls(r: dict[str, Any]) -> set[str]:
    out = set()
    try:
        extra = json.loads(r.get("extra") or "{}")
    except ValueError:
        extra = {}
    if isinstance(extra, dict):
        out |= {v for k in ("url", "final_url") if isinstance(v := extra.get(k), str) and v}
    evidence = r.get("evidence")
    if evidence:
        try:
            ev = json.loads(evidence)
        except ValueError:
            ev = {}
        if isinstance(ev, dict) and isinstance(ev.get("url"), str):
            out.add(ev["url"])
    key = r.get("source_key") or ""
    head, _, tail = key.partition(":")
    if head.isdigit() and tail.startswith(("http://", "https://")):  # a URL source's row key
        out.add(tail)
    return out


def kind_of(request: str) -> str:
    if request.startswith(("http://", "https://")):
        return "url"
    if _SAMPLE_ID.match(request):
        return "sample"
    if ":" in request:
        return "source_key"
    raise WithdrawalError(
        f"{request!r}: give a sample id (16 hex characters), a source key as source:key (as "
        "in the samples and quarantine tables), or an http(s) URL"
    )


def _probe(request: str) -> Identities:
    kind = kind_of(request)
    ids = Identities()
    if kind == "url":
        ids.urls.add(request)
    elif kind == "sample":
        ids.sample_ids.add(request)
    else:
        ids.source_keys.add(request)
    return ids


# --------------------------------------------------------------------------- the tables


def _rows(path: Path, probe: Identities, evidence: bool = False) -> Iterator[dict[str, Any]]:
    """Rows of a samples / quarantine table that ``probe`` matches (batch by batch)."""
    if not path.is_file():
        return
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    cols = [c for c in (*_COLS, *(["evidence"] if evidence else [])) if c in names]
    for batch in io.iter_parquet(path, columns=cols):
        mask = None
        for col, values in (("sample_id", probe.sample_ids), ("image_sha256", probe.media)):
            if col in cols and values:
                m = pc.is_in(batch.column(col), value_set=_arr(values))
                mask = m if mask is None else pc.or_(mask, m)
        if probe.source_keys and "source_key" in cols:
            keys = pc.binary_join_element_wise(batch.column("source"), batch.column("source_key"),
                                               ":")  # fmt: skip
            m = pc.is_in(keys, value_set=_arr(probe.source_keys))
            mask = m if mask is None else pc.or_(mask, m)
        if probe.urls:  # URLs live in extra / evidence / a URL source's key: test row by row
            texts = [c for c in ("extra", "evidence", "source_key") if c in cols]
            hit = [any(u in (row[c] or "") for c in texts for u in probe.urls)
                   for row in batch.select(texts).to_pylist()]  # fmt: skip
            m = _arr_b(hit)
            mask = m if mask is None else pc.or_(mask, m)
        if mask is None:
            continue
        for r in batch.filter(pc.fill_null(mask, False)).to_pylist():
            if probe.matches(r):
                yield r


def _arr(values: Iterable[str]) -> Any:
    import pyarrow as pa

    return pa.array(sorted(values), pa.string())


def _arr_b(values: list[bool]) -> Any:
    import pyarrow as pa

    return pa.array(values, pa.bool_())


def _closure(tables: list[Path], probe: Identities) -> Identities:
    """Every identity of what ``probe`` names, across the tables, followed until it stops
    growing (a URL gives a media digest, the digest every sample sharing the media)."""
    ids = Identities(set(probe.sample_ids), set(probe.source_keys), set(probe.urls),
                     set(probe.media))  # fmt: skip
    for _ in range(4):
        before = ids.to_json()
        for t in tables:
            for r in _rows(t, ids, evidence=t.name == "quarantine.parquet"):
                ids.add_row(r)
        if ids.to_json() == before:
            break
    return ids


def _tables(project: Path, remote: str | None) -> list[Path]:
    """The workspace's collected samples and quarantine, and every release's collected
    samples and quarantine (DVC cache objects), that exist here."""
    from cmrops import releases
    from cmrops.release_data import ReleaseData, ReleaseError

    found = [project / RAW_SAMPLES, project / RAW_QUARANTINE]
    for r in releases.list_releases(project, remote):
        try:
            data = ReleaseData(project, releases.find(project, r.id, remote), remote)
            found += [data.path(rel) for rel in (RAW_SAMPLES, RAW_QUARANTINE) if data.has(rel)]
        except (ReleaseError, OSError) as e:
            log.warning("withdraw: release %s not searched (%s)", r.id, e)
    return [p for p in found if p.is_file()]


# --------------------------------------------------------------------------- withdraw


def tombstone_path(project: Path) -> Path:
    from cmrops.params import load_section
    from cmrops.stages.collect import CollectParams

    params = load_section(project / "params.yaml", "collect", CollectParams)
    if params.withdrawn is None:
        raise WithdrawalError(f"{project}/params.yaml: collect.withdrawn is null - name the "
                              "tombstone file (withdrawn.jsonl) so collect honours withdrawals")
    return project / params.withdrawn


def withdraw(
    project: str | os.PathLike[str],
    requests: list[str],
    reason: str,
    by: str | None = None,
    remote: str | None = None,
) -> dict[str, Any]:
    """Withdraw every request (see the module docstring); returns what was done."""
    root = Path(project).resolve()
    if not reason.strip():
        raise WithdrawalError("--reason: say why (a takedown request, a licence change, ...)")
    requests = [r.strip() for r in requests if r.strip()]
    if not requests:
        raise WithdrawalError("nothing to withdraw: give ids, keys or URLs (or --file LIST)")
    for r in requests:
        kind_of(r)
    path = tombstone_path(root)
    existing = tombstones.Tombstones.load(path)
    tables = _tables(root, remote)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    new: list[Tombstone] = []
    unknown: list[str] = []
    done: list[str] = []
    for req in requests:
        if any(t.request == req for t in existing.entries):
            done.append(req)
            continue
        if not _any_row(tables, _probe(req)):
            unknown.append(req)
            continue
        ids = _closure(tables, _probe(req))
        new.append(Tombstone(req, kind_of(req), reason.strip(), now,  # type: ignore[arg-type]
                             tuple(sorted(ids.sample_ids)), tuple(sorted(ids.source_keys)),
                             tuple(sorted(ids.urls)), tuple(sorted(ids.media)), by))  # fmt: skip
    if unknown:
        raise WithdrawalError(
            f"unknown: {', '.join(repr(u) for u in unknown)} - no collected sample, quarantine "
            "row or release holds it (check the id with cmrops withdraw --impact, or the "
            "samples table); nothing was withdrawn"
        )
    if new:
        tombstones.append(path, new)
    removed = _remove_media(root, {m for t in new for m in t.media_sha256})
    return {
        "tombstones": str(path),
        "withdrawn": [t.to_json() for t in new],
        "already_withdrawn": done,
        "media_removed_from_workspace": removed,
        "next": "the next run (scheduled, or make run) rebuilds every output without them; "
                "commit the tombstone file to git",
    }


def _any_row(tables: list[Path], probe: Identities) -> bool:
    return any(True for t in tables for _ in _rows(t, probe, evidence=True))


def _remove_media(root: Path, digests: set[str]) -> list[str]:
    from cmrops.cas import ObjectStore

    store = root / "data/raw/objects"
    removed = []
    if not store.is_dir():
        return removed
    objects = ObjectStore(store)
    for sha in sorted(digests):
        p = objects.path(sha)
        if p.is_file():
            p.unlink()
            removed.append(objects.relpath(sha))
    return removed


# --------------------------------------------------------------------------- impact


def impact(
    project: str | os.PathLike[str], request: str, remote: str | None = None
) -> dict[str, Any]:
    """Where the sample ``request`` names is held (see the module docstring)."""
    from cmrops import releases
    from cmrops.release_data import ReleaseData, ReleaseError

    root = Path(project).resolve()
    kind_of(request)
    path = tombstone_path(root)
    stone = next((t for t in tombstones.Tombstones.load(path).entries if t.request == request),
                 None)  # fmt: skip
    if stone is not None:
        ids = Identities(set(stone.sample_ids), set(stone.source_keys), set(stone.urls),
                         set(stone.media_sha256))  # fmt: skip
    else:
        tables = _tables(root, remote)
        if not _any_row(tables, _probe(request)):
            raise WithdrawalError(
                f"unknown: {request!r} - no collected sample, quarantine row or release holds it"
            )
        ids = _closure(tables, _probe(request))
    out: dict[str, Any] = {"request": request, "withdrawn": stone is not None,
                           "identities": ids.to_json(), "releases": [], "not_in": []}  # fmt: skip
    for r in releases.list_releases(root, remote):
        try:
            rel = releases.find(root, r.id, remote)
            data = ReleaseData(root, rel, remote)
            entry = _holdings(lambda p, d=data: d.path(p) if d.has(p) else None, ids, data)
        except (ReleaseError, OSError) as e:
            out["releases"].append({"id": r.id, "error": str(e)})
            continue
        if entry["samples"]:
            entry = {"id": rel.id, "created": rel.created, **entry,
                     "exports": _exports(rel, set(entry["samples"]))}  # fmt: skip
            out["releases"].append(entry)
        else:
            out["not_in"].append(rel.id)
    ws = _holdings(lambda p: root / p if (root / p).exists() else None, ids, None)
    ws["media_in_store"] = sorted(m for m in ids.media
                                  if (root / "data/raw/objects" / m[:2] / m).is_file())  # fmt: skip
    out["workspace"] = ws
    return out


def _holdings(path_of: Any, ids: Identities, data: Any) -> dict[str, Any]:
    """Which samples of ``ids`` one state (a release, or the workspace) holds, and where."""
    raw = path_of(RAW_SAMPLES)
    samples = sorted({r["sample_id"] for r in _rows(raw, ids)}) if raw is not None else []
    found: dict[str, Any] = {s: {"collected": True} for s in samples}
    if not samples:
        return {"samples": [], "stages": {}, "models": [], "code_files": []}
    want = set(samples)

    def lookup(rel: str, cols: list[str]) -> dict[str, dict[str, Any]]:
        p = path_of(rel)
        if p is None:
            return {}
        t = io.read_parquet(p, columns=cols)
        t = t.filter(pc.is_in(t["sample_id"], value_set=_arr(want)))
        return {r["sample_id"]: r for r in t.to_pylist()}

    interim = lookup("data/interim/samples.parquet", ["sample_id"])
    kept = lookup("data/clean/samples.parquet", ["sample_id"])
    dropped = lookup("data/clean/quarantine.parquet", ["sample_id", "reason"])
    split = lookup("data/split/assignments.parquet", ["sample_id", "split", "in_train"])
    codes = lookup("data/codes/rows.parquet", ["sample_id", "role"])
    fitted = lookup("data/codes/training_samples.parquet", ["sample_id", "role"])
    models = _models(path_of, data)
    code_files: list[str] = []
    for s in samples:
        e = found[s]
        e["preprocessed"] = s in interim
        e["clean"] = "kept" if s in kept else (dropped[s]["reason"] if s in dropped else None)
        e["split"] = split[s]["split"] if s in split else None
        e["in_train"] = bool(split[s]["in_train"]) if s in split else False
        e["codes"] = codes[s]["role"] if s in codes else None
        e["fitted_on"] = fitted[s]["role"] if s in fitted else None
        if s in codes:
            code_files += [f"data/codes/{m}/{k}_{codes[s]['role']}{suffix}.npy" for m in models
                           for k in ("image", "text") for suffix in ("", "_float")]  # fmt: skip
    trained = models if any(e["fitted_on"] for e in found.values()) else []
    return {"samples": samples, "stages": found, "models": [f"models/{m}" for m in trained],
            "code_files": sorted(set(code_files))}  # fmt: skip


def _models(path_of: Any, data: Any) -> list[str]:
    """The model folders of a state: ``data/codes/<name>/meta.json``."""
    if data is not None:
        try:
            files = [p for p, _ in data.files("data/codes")]
        except Exception:  # a release that did not reach train
            return []
        return sorted({p.split("/")[2] for p in files if p.endswith("/meta.json")})
    codes = path_of("data/codes")
    if codes is None:
        return []
    return sorted(p.parent.name for p in Path(codes).glob("*/meta.json"))


def _exports(rel: Any, samples: set[str]) -> list[dict[str, Any]]:
    from cmrops.export import RECORDS

    out = []
    for name in sorted(rel.attachments):
        if not (name.startswith(f"{RECORDS}/") and name.endswith("/samples.txt")):
            continue
        path = rel.attachment(name)
        held = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
        if held & samples:
            manifest = json.loads(rel.attachment(name.replace("samples.txt", "manifest.json"))
                                  .read_text(encoding="utf-8"))  # fmt: skip
            out.append({"export_id": manifest["export_id"], "format": manifest["format"],
                        "path": manifest["path"], "created": manifest["created"],
                        "samples": sorted(held & samples)})  # fmt: skip
    return out
