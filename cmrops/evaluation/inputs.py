"""The evaluate stage's inputs, read and checked against each other: the code rows, the split
they were made for, its manifests, the relevance labels, the model folders and the aligned
float baseline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrops import io
from cmrops.codes import n_words
from cmrops.splitting import manifests as manifest_lists

if TYPE_CHECKING:
    from cmrops.stages.evaluate import EvaluateParams


ROLES = ("query", "database")


def load_rows(codes: Path) -> tuple[list[str], list[str]]:
    path = codes / "rows.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops train` first")
    t = io.read_parquet(path)
    missing = {"role", "row", "sample_id"} - set(t.column_names)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    roles = t["role"].to_pylist()
    rows = t["row"].to_pylist()
    ids = t["sample_id"].to_pylist()
    unknown = sorted({r for r in roles if r not in ROLES}, key=str)
    if unknown:
        raise ValueError(f"{path}: role must be query or database, got {unknown}")
    out = []
    for role in ROLES:
        pairs = sorted((r, s) for ro, r, s in zip(roles, rows, ids, strict=True) if ro == role)
        if [r for r, _ in pairs] != list(range(len(pairs))):
            raise ValueError(f"{path}: the {role} rows must be 0..n-1, each once")
        if not pairs:
            raise ValueError(f"{path}: no {role} rows")
        out.append([s for _, s in pairs])
    return out[0], out[1]


def load_split(path: Path, query_ids: list[str], database_ids: list[str]) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found - run `cmrops split` first")
    t = io.read_parquet(path)
    protocols = sorted(set(t["protocol"].to_pylist()))
    seeds = sorted(set(t["seed"].to_pylist()))
    if len(protocols) != 1 or len(seeds) != 1:
        raise ValueError(f"{path}: expected one protocol and seed, got {protocols}, {seeds}")
    meta = t.schema.metadata or {}
    spec = json.loads(meta.get(b"cmrops.protocol", b"{}"))
    split_of = dict(zip(t["sample_id"].to_pylist(), t["split"].to_pylist(), strict=True))
    train_of = dict(zip(t["sample_id"].to_pylist(), t["in_train"].to_pylist(), strict=True))
    roles: dict[str, Any] = {}
    for role, ids in (("query", query_ids), ("database", database_ids)):
        unknown = [s for s in ids if s not in split_of]
        if unknown:
            raise ValueError(
                f"{path}: {len(unknown)} {role} sample(s) of the codes are not in the split "
                f"(e.g. {unknown[0]}): the codes were made for another split - rerun train"
            )
        sets: dict[str, int] = {}
        for s in ids:
            sets[split_of[s]] = sets.get(split_of[s], 0) + 1
        roles[role] = {
            "samples": len(ids),
            "sets": dict(sorted(sets.items())),
            "in_train": sum(bool(train_of[s]) for s in ids),
        }
    overlap = len(set(query_ids) & set(database_ids))
    splits = t["split"].to_pylist()
    sets_all = {name: splits.count(name) for name in sorted(set(splits))}
    stamp = {
        "name": protocols[0],
        "protocol": spec,
        "seed": int(seeds[0]),
        "roles": roles,
        "query_database_overlap": overlap,
    }
    return {
        "name": protocols[0],
        "seed": int(seeds[0]),
        "spec": spec,
        "sets": sets_all,
        "in_train": sum(bool(x) for x in t["in_train"].to_pylist()),
        "stamp": stamp,
    }


def load_manifests(split_dir: Path, query_ids: list[str]) -> dict[str, Any] | None:
    """The split's manifests (None when the split folder has none); refused when their query
    set (``query``, or ``test`` of a ratio split) is not the codes' query set."""
    try:
        lists = manifest_lists.read_manifests(split_dir)
    except FileNotFoundError:
        return None
    sets = lists["sets"]
    name = "query" if "query" in sets else "test"
    if set(sets.get(name, ())) != set(query_ids):
        raise ValueError(
            f"{split_dir / manifest_lists.MANIFEST_DIR}: its {name} list "
            f"({len(sets.get(name, ()))} samples) is not the codes' query set "
            f"({len(query_ids)} samples): the manifests or the codes are stale - rerun "
            "`cmrops split` and `cmrops train`"
        )
    return lists


def train_metrics_of(codes: Path, path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    p = Path(path) if path is not None else codes / "train.json"
    if not p.is_file():
        if path is not None:
            raise FileNotFoundError(f"{p}: not found - run `cmrops train` (it writes it)")
        return None
    return dict(json.loads(p.read_text(encoding="utf-8")))


def relevance_of(
    params: EvaluateParams,
    labelled_dir: str | os.PathLike[str] | None,
    query_ids: list[str],
    database_ids: list[str],
) -> dict[str, Any]:
    """The primary relevance (``mode``, ``stamp``, label matrices when ``labels``) and, when
    the primary is ``pair`` and the samples have labels, the label relevance beside it
    (``secondary``)."""
    path = Path(labelled_dir) / "labels.parquet" if labelled_dir else None
    have = path is not None and path.is_file()
    if params.relevance == "labels" and not have:
        raise FileNotFoundError(
            f"{path or '--labelled'}: labels.parquet not found - run `cmrops label` first, or "
            "set evaluate.relevance: pair"
        )
    per: dict[str, set[str]] = {}
    if have:
        t = io.read_parquet(path)
        conf = t["confidence"].to_pylist() if "confidence" in t.column_names else None
        for i, (sid, label) in enumerate(
            zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), strict=True)
        ):
            if label is None or (conf is not None and (conf[i] or 0.0) < params.min_confidence):
                continue
            per.setdefault(sid, set()).add(label)
    induced = _induced(Path(labelled_dir)) if labelled_dir else False
    q_lab = sum(s in per for s in query_ids)
    d_lab = sum(s in per for s in database_ids)
    mode = params.relevance
    why = f"evaluate.relevance: {mode}"
    if mode == "auto":
        if induced:
            mode = "pair"
            why = (
                "auto: the labels were induced from the captions (vocabulary.json), so a caption "
                "retrieves its own photo first; label relevance is reported beside it"
            )
        else:
            mode = "labels" if q_lab and d_lab else "pair"
            why = (
                "auto: labels found for query and database samples"
                if mode == "labels"
                else "auto: no labels for the query or the database samples (unlabelled data)"
            )
    if mode == "labels" and not (q_lab and d_lab):
        raise ValueError(
            f"{path}: no labels (confidence >= {params.min_confidence}) for the "
            f"{'query' if not q_lab else 'database'} samples - use evaluate.relevance: pair"
        )
    out: dict[str, Any] = {"mode": mode, "stamp": {"mode": mode, "why": why}}
    if mode == "labels":
        _add_labels(out, _label_relevance(per, path, params, query_ids, database_ids, induced))
    else:
        out["stamp"]["rule"] = (
            "relevant = the query's own pair only (same sample); the database of a cross-modal "
            "direction is the query samples' other modality and the database samples', in "
            "sample_id order (content hashes), so database order never favours the pair"
        )
        if q_lab and d_lab:
            second = {"mode": "labels", "stamp": {"mode": "labels", "why": (
                "beside pair relevance: the labels"
                + (" induced from the captions" if induced else "")
            )}}  # fmt: skip
            _add_labels(
                second, _label_relevance(per, path, params, query_ids, database_ids, induced)
            )
            out["secondary"] = second
    return out


def _add_labels(out: dict[str, Any], lab: dict[str, Any]) -> None:
    out["query_labels"], out["database_labels"] = lab["query_labels"], lab["database_labels"]
    out["stamp"].update(lab["stamp_update"])


def _label_relevance(
    per: dict[str, set[str]],
    path: Path | None,
    params: EvaluateParams,
    query_ids: list[str],
    database_ids: list[str],
    induced: bool,
) -> dict[str, Any]:
    vocab = sorted({lab for s in (*query_ids, *database_ids) for lab in per.get(s, ())})
    col = {lab: j for j, lab in enumerate(vocab)}

    def hot(ids: list[str]) -> np.ndarray:
        a = np.zeros((len(ids), len(vocab)), dtype=bool)
        for i, s in enumerate(ids):
            for lab in per.get(s, ()):
                a[i, col[lab]] = True
        return a

    q_lab = sum(s in per for s in query_ids)
    d_lab = sum(s in per for s in database_ids)
    return {
        "query_labels": hot(query_ids),
        "database_labels": hot(database_ids),
        "stamp_update": {
            "rule": "relevant = shares at least one label with the query",
            "labels": str(path),
            "labels_induced": induced,
            "min_confidence": params.min_confidence,
            "vocabulary": len(vocab),
            "unlabelled": {"query": len(query_ids) - q_lab, "database": len(database_ids) - d_lab},
        },
    }


def _induced(labelled: Path) -> bool:
    """Whether the label stage induced its vocabulary from the captions (vocabulary.json)."""
    try:
        v = json.loads((labelled / "vocabulary.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(isinstance(v, dict) and v.get("induced"))


def find_models(codes: Path, wanted: list[str]) -> list[tuple[str, Path, dict[str, Any]]]:
    found = {
        p.name: p for p in sorted(codes.iterdir()) if p.is_dir() and (p / "meta.json").is_file()
    }
    if wanted:
        missing = [w for w in wanted if w not in found]
        if missing:
            raise FileNotFoundError(
                f"{codes}: no codes for model(s) {', '.join(missing)} "
                f"(found: {', '.join(found) or 'none'})"
            )
        found = {w: found[w] for w in sorted(set(wanted))}
    if not found:
        raise FileNotFoundError(
            f"{codes}: no model folders (<method>-<bits>/meta.json) - run `cmrops train` first"
        )
    out = []
    for name, folder in found.items():
        meta = read_meta(folder)
        if meta.get("kind") == FLOAT_BASELINE:
            if wanted:
                raise ValueError(
                    f"{folder}: a float baseline (meta.json kind {FLOAT_BASELINE!r}), not a "
                    "hashing model - leave it out of evaluate.models (aligned_baseline names it)"
                )
            continue
        if not isinstance(meta.get("n_bits", meta.get("bits")), int):
            raise ValueError(f"{folder / 'meta.json'}: needs an integer n_bits (or bits)")
        out.append((name, folder, meta))
    if not out:
        raise FileNotFoundError(
            f"{codes}: no hashing model folders (<method>-<bits>/meta.json) - run `cmrops train`"
        )
    return out


#: ``meta.json`` ``kind`` of a folder of float vectors without codes (the aligned baseline).
FLOAT_BASELINE = "float_baseline"


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / 'meta.json'}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / 'meta.json'}: expected a JSON object")
    return meta


def media_of(models: list[tuple[str, Path, dict[str, Any]]]) -> str:
    """The media every model's "image" codes are of (train writes it; older codes: image)."""
    kinds = {str(meta.get("media", "image")) for _, _, meta in models}
    if len(kinds) > 1:
        raise ValueError(
            f"the models under the codes folder are of several media ({', '.join(sorted(kinds))})"
            ": rerun `cmrops train` on one data set"
        )
    return kinds.pop() if kinds else "image"


def find_baseline(
    codes: Path,
    params: EvaluateParams,
    split: dict[str, Any],
    n_query: int,
    n_database: int,
    notes: dict[str, str],
) -> tuple[Path, dict[str, Any]] | None:
    """The aligned float baseline's folder and meta, or None (with a note) when absent."""
    if params.aligned_baseline is None:
        notes["float_baseline"] = "evaluate.aligned_baseline is null: not evaluated"
        return None
    folder = codes / params.aligned_baseline
    if not (folder / "meta.json").is_file():
        notes["float_baseline"] = (
            f"{folder}: no aligned float baseline (train writes it when train.float_baseline "
            "is true): float_baseline and vs_float_baseline left out"
        )
        return None
    meta = read_meta(folder)
    if meta.get("kind") != FLOAT_BASELINE:
        raise ValueError(
            f"{folder / 'meta.json'}: kind {meta.get('kind')!r}, expected {FLOAT_BASELINE!r} "
            "(evaluate.aligned_baseline names the aligned float baseline's folder)"
        )
    check_meta(folder, meta, split)
    for key, n in (("n_query", n_query), ("n_database", n_database)):
        if meta.get(key) is not None and meta[key] != n:
            raise ValueError(
                f"{folder / 'meta.json'}: {key} {meta[key]} but rows.parquet has {n} - the "
                "baseline was made for other rows; rerun train"
            )
    return folder, meta


def check_meta(folder: Path, meta: dict[str, Any], split: dict[str, Any]) -> None:
    if meta.get("protocol") is not None and meta["protocol"] != split["name"]:
        raise ValueError(
            f"{folder / 'meta.json'}: codes made for protocol {meta['protocol']!r}, but the split "
            f"is {split['name']!r} - rerun train"
        )
    if meta.get("split_seed") is not None and meta["split_seed"] != split["seed"]:
        raise ValueError(
            f"{folder / 'meta.json'}: codes made for split seed {meta['split_seed']}, but the "
            f"split's seed is {split['seed']} - rerun train"
        )


def load_codes(path: Path, rows: int, n_bits: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (train writes it)")
    a = io.read_npy(path)
    words = n_words(n_bits)
    if a.dtype != np.uint64 or a.shape != (rows, words):
        raise ValueError(
            f"{path}: expected uint64 codes of shape ({rows}, {words}) for {n_bits} bits, "
            f"got {a.dtype}{a.shape}"
        )
    if n_bits % 64 and np.any(a[:, -1] >> np.uint64(n_bits % 64)):
        raise ValueError(f"{path}: bits past n_bits = {n_bits} are set (pack with pack_bits)")
    return np.ascontiguousarray(a)


def load_float(path: Path, rows: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found - the float baseline needs it (or set "
            "evaluate.float_baseline: false)"
        )
    a = io.read_npy(path)
    if a.ndim != 2 or a.shape[0] != rows or not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"{path}: expected float rows of shape ({rows}, dim), got {a.dtype}{a.shape}"
        )
    return a
