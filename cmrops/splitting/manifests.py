"""Split manifests: each set of a split as a plain, sorted list of sample ids, with checksums.

A table of retrieval figures is only reproducible when the exact samples behind it are known.
:func:`write_manifests` writes, under ``<split_dir>/manifests/``:

* ``{query,database,train,val,test}.txt`` - one ``sample_id`` per line (``\\n``-terminated),
  sorted, only the sets the protocol has: ``query``/``database``/``train`` for the hashing
  protocol (``train`` = the ``in_train`` samples, which may lie in the database or, for an
  imported benchmark, outside it), ``train``/``val``/``test`` for a ratio split;
* ``near_duplicate_queries.txt`` - the query samples that have a near-duplicate in the database
  (the caller decides what a near-duplicate is, and says how in ``info``);
* ``manifest.json`` - the protocol, the seed, the count and sha256 of every list, and the
  near-duplicate definition.

Lists of sets the protocol does not have (left by an earlier run of another protocol) are
removed, so the folder always describes one split. :func:`read_manifests` reads the folder back
and checks every list against its sha256.

Callers: the split stage (near-duplicates by its own linking rule, see
:mod:`cmrops.splitting.audit`) and the benchmark importer (near-duplicates from features).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cmrops import io

#: The folder under the split folder.
MANIFEST_DIR = "manifests"
#: The sets a manifest may list, in this order.
SET_NAMES = ("query", "database", "train", "val", "test")
NEAR_DUPLICATES = "near_duplicate_queries"
MANIFEST_JSON = "manifest.json"
#: Keys of ``manifest.json`` that :func:`write_manifests` fills itself (``info`` may not set them).
_RESERVED = ("sets", "counts", "files", NEAR_DUPLICATES)


def _list_bytes(ids: Sequence[str]) -> bytes:
    return "".join(f"{s}\n" for s in ids).encode("utf-8")


def _sets(assignments: pa.Table) -> dict[str, list[str]]:
    """Sorted sample ids of every set the split's protocol has."""
    for c in ("sample_id", "split"):
        if c not in assignments.column_names:
            raise ValueError(f"assignments: missing column {c!r} (the ASSIGNMENTS contract)")
    ids = assignments["sample_id"].to_pylist()
    split = assignments["split"].to_pylist()
    if None in ids or len(set(ids)) != len(ids):
        raise ValueError("assignments: sample_id must be unique and non-null")
    if "in_train" in assignments.column_names:
        in_train = [bool(x) for x in assignments["in_train"].to_pylist()]
    else:
        in_train = [s == "train" for s in split]
    unknown = sorted({str(s) for s in split} - set(SET_NAMES))
    if unknown:
        raise ValueError(
            f"assignments: sets {unknown} are none of {', '.join(SET_NAMES)}; rename them "
            "(query/database for the hashing protocol, train/val/test for a ratio split)"
        )
    hashing = "query" in split or "database" in split
    names = ("query", "database", "train") if hashing else ("train", "val", "test")
    out: dict[str, list[str]] = {}
    for name in names:
        if hashing and name == "train":
            members = [i for i, t in zip(ids, in_train, strict=True) if t]
        else:
            members = [i for i, s in zip(ids, split, strict=True) if s == name]
        if hashing or name in split:  # the hashing protocol always has its three sets
            out[name] = sorted(members)
    return out


def write_manifests(
    split_dir: Path,
    assignments: pa.Table,
    near_duplicate_queries: Sequence[str],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Write ``<split_dir>/manifests/`` (see module docstring); returns ``manifest.json``'s
    content.

    ``assignments`` has ``sample_id``, ``split`` and (optionally) ``in_train`` (the
    :data:`~cmrops.schema.ASSIGNMENTS` contract; ``protocol``/``seed`` columns are used when
    ``info`` does not give them). ``near_duplicate_queries`` are query sample ids; ``info``
    must hold ``near_duplicates`` (how a near-duplicate was defined: a string or a mapping,
    copied as it is) and may hold ``protocol``, ``seed`` and any other keys worth recording."""
    if "near_duplicates" not in info:
        raise ValueError(
            "write_manifests: info needs 'near_duplicates' - how a near-duplicate was defined "
            "(e.g. {'rule': 'pHash within 8 or caption SimHash within 3'})"
        )
    clash = [k for k in _RESERVED if k in info]
    if clash:
        raise ValueError(f"write_manifests: info may not set {clash} (written from the lists)")
    sets = _sets(assignments)
    if "query" not in sets and near_duplicate_queries:
        raise ValueError("near-duplicate queries given for a split without a query set")
    queries = set(sets.get("query", []))
    nd = sorted(set(near_duplicate_queries))
    stray = [s for s in nd if s not in queries]
    if stray:
        raise ValueError(
            f"near_duplicate_queries: {len(stray)} id(s) are not query samples "
            f"(first: {stray[0]!r}); pass query sample ids only"
        )
    folder = Path(split_dir) / MANIFEST_DIR
    folder.mkdir(parents=True, exist_ok=True)
    lists = {**sets, NEAR_DUPLICATES: nd} if "query" in sets else dict(sets)
    files: dict[str, dict[str, Any]] = {}
    for name, ids in lists.items():
        data = _list_bytes(ids)
        io.write_bytes(folder / f"{name}.txt", data)
        files[name] = {
            "file": f"{name}.txt",
            "samples": len(ids),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    for stale in (*SET_NAMES, NEAR_DUPLICATES):
        if stale not in lists:
            (folder / f"{stale}.txt").unlink(missing_ok=True)

    def column_value(col: str) -> Any:
        if col not in assignments.column_names or not len(assignments):
            return None
        vals = sorted({v for v in assignments[col].to_pylist() if v is not None}, key=str)
        return vals[0] if len(vals) == 1 else vals

    manifest: dict[str, Any] = {
        "protocol": info.get("protocol", column_value("protocol")),
        "seed": info.get("seed", column_value("seed")),
        **{k: v for k, v in info.items() if k not in ("protocol", "seed", "near_duplicates")},
        "sets": list(sets),
        "counts": {name: len(ids) for name, ids in sets.items()},
        "files": files,
    }
    if "query" in sets:
        manifest[NEAR_DUPLICATES] = {
            "count": len(nd),
            "of_queries": len(sets["query"]),
            "definition": info["near_duplicates"],
        }
    io.write_json(folder / MANIFEST_JSON, manifest)
    return manifest


def read_manifests(split_dir: Path) -> dict[str, Any]:
    """``manifest.json`` of ``<split_dir>/manifests/`` with the lists read back and checked:
    ``{"manifest": {...}, "sets": {name: [ids]}, "near_duplicate_queries": [ids]}``.

    Raises ``FileNotFoundError`` when there is no manifest, ``ValueError`` when a list does not
    match its sha256 (edited or truncated: re-run ``cmrops split``)."""
    import json

    folder = Path(split_dir) / MANIFEST_DIR
    path = folder / MANIFEST_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found - re-run `cmrops split` (it writes the split manifests)"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    lists: dict[str, list[str]] = {}
    for name, entry in manifest.get("files", {}).items():
        p = folder / entry["file"]
        if not p.is_file():
            raise FileNotFoundError(f"{p}: listed in {path} but missing - re-run `cmrops split`")
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(
                f"{p}: its sha256 differs from {path} (the list was changed) - re-run "
                "`cmrops split`"
            )
        lists[name] = data.decode("utf-8").splitlines()
    nd = lists.pop(NEAR_DUPLICATES, [])
    return {"manifest": manifest, "sets": lists, NEAR_DUPLICATES: nd}
