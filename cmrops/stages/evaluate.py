"""Evaluate stage: retrieval quality of every trained hashing model, stated exactly.

``run(params, codes_dir, labelled_dir, split_dir, metrics_path, plots_dir)`` reads

* ``<codes>/rows.parquet`` - ``role`` (query / database), ``row``, ``sample_id``: row ``i`` of
  every ``*_query.npy`` / ``*_database.npy`` below is that role's sample ``i``;
* ``<codes>/<method>-<bits>/`` (one folder per model, all of them unless ``models`` names some):
  ``{image,text}_{query,database}.npy`` (packed ``uint64`` codes), ``..._float.npy`` (``float32``
  continuous head outputs, the float baseline) and ``meta.json`` (``method``, ``bits``,
  ``n_bits``, ``protocol``, ``split_seed``, ``model_dir``, ...);
* ``<labelled>/labels.parquet`` - the effective labels (``sample_id``, ``label``, ...,
  ``confidence``);
* ``<split>/assignments.parquet`` - the split (``protocol``, ``seed``; the protocol's spec in the
  schema metadata). Codes made for another split (a sample unknown to it, or ``meta.json``
  naming another protocol or seed) are refused.

and writes ``metrics_path`` (``metrics/retrieval.json``) and DVC plot files under ``plots_dir``:
``pr/<model>_<direction>.json`` (rows ``{radius, precision, recall, coverage}``) and
``pk/<model>_<direction>.json`` (rows ``{k, precision, precision_database_order,
float_precision}``).

**Directions**: ``image_to_text`` (image queries, text database), ``text_to_image``, and on request
``image_to_image``, ``text_to_text``.

**Relevance** (``relevance``): ``labels`` - a database item is relevant when it shares at least one
label with the query (labels with ``confidence >= min_confidence``); ``pair`` - for unlabelled
data, only the query's own pair is relevant, so the database of ``image_to_text`` is the texts of
the query samples followed by those of the database samples (``text_to_image`` likewise), and the
unimodal directions are skipped (the pair of a query would be itself); ``auto`` - ``labels`` when
some query and some database sample have a label, else ``pair``.

**Metrics** per model and direction (:mod:`cmrops.metrics` has the formulas and conventions):
tie-aware mAP over the whole ranking (a query with no relevant item counts as AP 0; the number of
such queries and the mAP over the others are given), the database-order mAP beside it (ties
broken by database row, what a stable sort gives), mAP@k for ``map_at``, P@K, R@K and NDCG@K for
``top_k`` (tie-aware), precision / recall within Hamming radius ``radius`` (the whole curve goes to
the plots), the same ranking metrics for the float baseline (cosine similarity of the continuous
outputs) and the gap (float minus hash); code health of each modality's database codes. Cut-offs
above the database size are clipped to it and listed under ``cutoffs_clipped``. Values are
rounded to 6 decimals.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmrops import io
from cmrops import metrics as M
from cmrops.codes import n_words

log = logging.getLogger(__name__)

STAGE = "evaluate"
Direction = Literal["image_to_text", "text_to_image", "image_to_image", "text_to_text"]
DIRECTIONS: dict[str, tuple[str, str]] = {
    "image_to_text": ("image", "text"),
    "text_to_image": ("text", "image"),
    "image_to_image": ("image", "image"),
    "text_to_text": ("text", "text"),
}
ROLES = ("query", "database")
MODALITIES = ("image", "text")

TIES = {
    "tie_aware": (
        "expected value under a uniformly random order of the database items at equal Hamming "
        "distance (McSherry & Najork 2008), in closed form from per-distance counts; the default"
    ),
    "database_order": (
        "ties broken by database row (a stable sort by distance, the order of "
        "HammingIndex.search): what calc_map with a stable argsort computes"
    ),
    "float": "cosine similarity of the continuous outputs; exact ties broken by database row",
}
DEFINITIONS = {
    "map": (
        "mean over all queries of average precision over the whole ranking; a query with no "
        "relevant item has AP 0 (see queries_without_relevant, map_relevant_only)"
    ),
    "map_at": (
        "CalcTopMap: precision averaged over the relevant positions within the top k, divided "
        "by the relevant items retrieved there (0 when none)"
    ),
    "precision_at": "relevant items in the top K / K",
    "recall_at": "relevant items in the top K / all relevant items (0 when none)",
    "ndcg_at": "binary gains, 1/log2(position + 1) discounts, ideal DCG over min(R, K) items",
    "within_radius": (
        "Hamming lookup within the radius: precision averaged over the queries that retrieve "
        "something (coverage = their share), recall over all queries with a relevant item"
    ),
    "gap": "float baseline minus hash (tie-aware)",
    "code_health": (
        "over each modality's database codes: bit balance (mean |P(bit) - 0.5|, worst bit), "
        "mean |Pearson correlation| between non-constant bits, bucket occupancy"
    ),
}


# --------------------------------------------------------------------------- params


def _default_directions() -> list[Direction]:
    return ["image_to_text", "text_to_image"]


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate:`` section of params.yaml."""

    directions: list[Direction] = field(default_factory=_default_directions)
    relevance: Literal["auto", "labels", "pair"] = "auto"
    min_confidence: float = 0.0  # labels below this confidence are not used for relevance
    map_at: list[int] = field(default_factory=lambda: [50, 1000, 5000])
    top_k: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 100, 1000])  # P/R/NDCG@K
    pk_curve: list[int] = field(
        default_factory=lambda: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    )
    radius: int = 2  # precision / recall within this Hamming radius (clipped to n_bits)
    database_order: bool = True  # also the mAP with ties broken by database order
    float_baseline: bool = True  # needs the *_float.npy outputs
    models: list[str] = field(default_factory=list)  # <method>-<bits> folders; empty = all
    n_threads: int | None = None  # for the Rust kernel; None = every core

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("directions: at least one")
        if len(set(self.directions)) != len(self.directions):
            raise ValueError(f"directions: repeated entries in {self.directions}")
        for name in ("map_at", "top_k", "pk_curve"):
            ks = getattr(self, name)
            if any(isinstance(k, bool) or k < 1 for k in ks):
                raise ValueError(f"{name}: cut-offs must be integers >= 1, got {ks}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        if self.n_threads is not None and self.n_threads < 1:
            raise ValueError(f"n_threads must be >= 1 or null, got {self.n_threads}")


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops evaluate --params P --codes C --labelled L --split S --metrics M --plots D``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, EvaluateParams)
    m = run(params, args.codes, args.labelled, args.split, args.metrics, args.plots)
    print(
        f"evaluate ({m['split']['name']}, seed {m['split']['seed']}, relevance "
        f"{m['relevance']['mode']}): {len(m['models'])} model(s)"
    )
    for name, model in m["models"].items():
        for direction, d in model["directions"].items():
            h, f = d["hash"], d.get("float", {})
            fl = f" | float {f['map']:.4f}" if f else ""
            print(
                f"  {name:<14} {direction:<14} mAP {h['map']:.4f} (database order "
                f"{h.get('map_database_order', float('nan')):.4f}){fl}  "
                f"[{d['queries']} x {d['database']}]"
            )
    for direction, why in m.get("skipped", {}).items():
        print(f"  {direction} skipped: {why}")
    return 0


def run(
    params: EvaluateParams,
    codes_dir: str | os.PathLike[str],
    labelled_dir: str | os.PathLike[str] | None,
    split_dir: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    plots_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Evaluate every model under ``codes_dir`` (see module docstring); returns the metrics."""
    codes = Path(codes_dir)
    query_ids, database_ids = _load_rows(codes)
    split = _load_split(Path(split_dir) / "assignments.parquet", query_ids, database_ids)
    relevance = _relevance(params, labelled_dir, query_ids, database_ids)
    models = _find_models(codes, params.models)
    plots = Path(plots_dir)

    out_models: dict[str, Any] = {}
    written: set[Path] = set()
    skipped: dict[str, str] = {}
    for name, folder, meta in models:
        _check_meta(folder, meta, split)
        t0 = time.perf_counter()
        entry = _evaluate_model(
            params, name, folder, meta, query_ids, database_ids, relevance, plots, written, skipped
        )
        log.info("evaluated %s in %.1fs", name, time.perf_counter() - t0)
        out_models[name] = entry

    metrics: dict[str, Any] = {
        "stage": STAGE,
        "split": split["stamp"],
        "relevance": relevance["stamp"],
        "ties": TIES,
        "definitions": DEFINITIONS,
        "directions": list(params.directions),
        "models": out_models,
    }
    if skipped:
        metrics["skipped"] = skipped
    for sub in ("pr", "pk"):  # plots of models no longer present would look current
        for stale in sorted((plots / sub).glob("*.json")) if (plots / sub).is_dir() else []:
            if stale not in written:
                stale.unlink()
    io.write_json(metrics_path, metrics)
    return metrics


# --------------------------------------------------------------------------- inputs


def _load_rows(codes: Path) -> tuple[list[str], list[str]]:
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


def _load_split(path: Path, query_ids: list[str], database_ids: list[str]) -> dict[str, Any]:
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
    stamp = {
        "name": protocols[0],
        "protocol": spec,
        "seed": int(seeds[0]),
        "roles": roles,
        "query_database_overlap": overlap,
    }
    return {"name": protocols[0], "seed": int(seeds[0]), "stamp": stamp}


def _relevance(
    params: EvaluateParams,
    labelled_dir: str | os.PathLike[str] | None,
    query_ids: list[str],
    database_ids: list[str],
) -> dict[str, Any]:
    path = Path(labelled_dir) / "labels.parquet" if labelled_dir else None
    have = path is not None and path.is_file()
    if params.relevance == "labels" and not have:
        raise FileNotFoundError(
            f"{path or '--labelled'}: labels.parquet not found - run `cmrops label` first, or "
            "set evaluate.relevance: pair"
        )
    per: dict[str, set[str]] = {}
    if have and params.relevance != "pair":
        t = io.read_parquet(path)
        conf = t["confidence"].to_pylist() if "confidence" in t.column_names else None
        for i, (sid, label) in enumerate(
            zip(t["sample_id"].to_pylist(), t["label"].to_pylist(), strict=True)
        ):
            if label is None or (conf is not None and (conf[i] or 0.0) < params.min_confidence):
                continue
            per.setdefault(sid, set()).add(label)
    q_lab = sum(s in per for s in query_ids)
    d_lab = sum(s in per for s in database_ids)
    mode = params.relevance
    why = f"evaluate.relevance: {mode}"
    if mode == "auto":
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
    stamp: dict[str, Any] = {"mode": mode, "why": why}
    out: dict[str, Any] = {"mode": mode, "stamp": stamp}
    if mode == "labels":
        vocab = sorted({lab for s in (*query_ids, *database_ids) for lab in per.get(s, ())})
        col = {lab: j for j, lab in enumerate(vocab)}

        def hot(ids: list[str]) -> np.ndarray:
            a = np.zeros((len(ids), len(vocab)), dtype=bool)
            for i, s in enumerate(ids):
                for lab in per.get(s, ()):
                    a[i, col[lab]] = True
            return a

        out["query_labels"] = hot(query_ids)
        out["database_labels"] = hot(database_ids)
        stamp.update(
            rule="relevant = shares at least one label with the query",
            labels=str(path),
            min_confidence=params.min_confidence,
            vocabulary=len(vocab),
            unlabelled={"query": len(query_ids) - q_lab, "database": len(database_ids) - d_lab},
        )
    else:
        stamp.update(
            rule=(
                "relevant = the query's own pair only (same sample); the database of a "
                "cross-modal direction is the query samples' other modality followed by the "
                "database samples'"
            )
        )
    return out


def _find_models(codes: Path, wanted: list[str]) -> list[tuple[str, Path, dict[str, Any]]]:
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
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder / 'meta.json'}: not valid JSON: {e}") from e
        if not isinstance(meta, dict) or not isinstance(meta.get("n_bits", meta.get("bits")), int):
            raise ValueError(f"{folder / 'meta.json'}: needs an integer n_bits (or bits)")
        out.append((name, folder, meta))
    return out


def _check_meta(folder: Path, meta: dict[str, Any], split: dict[str, Any]) -> None:
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


def _load_codes(path: Path, rows: int, n_bits: int) -> np.ndarray:
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


def _load_float(path: Path, rows: int) -> np.ndarray:
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


# --------------------------------------------------------------------------- evaluation


def _r(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _by_requested(clip: dict[int, int], values: dict[int, Any]) -> dict[str, float | None]:
    return {str(k): _r(values[v]) for k, v in sorted(clip.items())}


def _evaluate_model(
    params: EvaluateParams,
    name: str,
    folder: Path,
    meta: dict[str, Any],
    query_ids: list[str],
    database_ids: list[str],
    relevance: dict[str, Any],
    plots: Path,
    written: set[Path],
    skipped: dict[str, str],
) -> dict[str, Any]:
    n_bits = int(meta.get("n_bits", meta.get("bits")))
    counts = {"query": len(query_ids), "database": len(database_ids)}
    pair = relevance["mode"] == "pair"
    wanted = [d for d in params.directions if not (pair and DIRECTIONS[d][0] == DIRECTIONS[d][1])]
    for d in params.directions:
        if d not in wanted:
            skipped[d] = "pair relevance: the only relevant item of a query would be itself"
    used = sorted({m for d in wanted for m in DIRECTIONS[d]})
    codes = {
        (m, role): _load_codes(folder / f"{m}_{role}.npy", counts[role], n_bits)
        for m in used
        for role in ROLES
    }
    floats = (
        {
            (m, role): _load_float(folder / f"{m}_{role}_float.npy", counts[role])
            for m in used
            for role in ROLES
        }
        if params.float_baseline
        else {}
    )
    entry: dict[str, Any] = {
        "method": meta.get("method"),
        "bits": meta.get("bits", n_bits),
        "n_bits": n_bits,
        "model_dir": meta.get("model_dir"),
        "protocol": meta.get("protocol"),
        "split_seed": meta.get("split_seed"),
        "code_health": {m: _health(M.code_health(codes[m, "database"], n_bits)) for m in used},
        "directions": {},
    }
    for direction in wanted:
        qm, dm = DIRECTIONS[direction]
        q = codes[qm, "query"]
        db = codes[dm, "database"]
        fq = floats.get((qm, "query"))
        fdb = floats.get((dm, "database"))
        if pair:
            db = np.concatenate([codes[dm, "query"], db])
            if floats:
                fdb = np.concatenate([floats[dm, "query"], fdb])
            ql, dl = M.pair_labels(query_ids, [*query_ids, *database_ids])
        else:
            ql, dl = relevance["query_labels"], relevance["database_labels"]
        entry["directions"][direction] = _evaluate_direction(
            params, f"{name}_{direction}", n_bits, q, db, fq, fdb, ql, dl, plots, written
        )
    return entry


def _health(h: dict[str, Any]) -> dict[str, Any]:
    def rnd(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        return _r(v) if isinstance(v, float) else v

    return rnd(h)


def _evaluate_direction(
    params: EvaluateParams,
    plot_name: str,
    n_bits: int,
    q: np.ndarray,
    db: np.ndarray,
    fq: np.ndarray | None,
    fdb: np.ndarray | None,
    ql: np.ndarray,
    dl: np.ndarray,
    plots: Path,
    written: set[Path],
) -> dict[str, Any]:
    n_db = len(db)
    map_k = M.clip_cutoffs(params.map_at, n_db)
    top_k = M.clip_cutoffs(params.top_k, n_db)
    curve_k = M.clip_cutoffs(params.pk_curve, n_db)
    ranks = set(top_k.values()) | set(curve_k.values())

    total, relevant = M.histograms(q, db, ql, dl, n_threads=params.n_threads)
    assert not total[:, n_bits + 1 :].any(), "bits past n_bits were checked to be zero"
    total, relevant = total[:, : n_bits + 1], relevant[:, : n_bits + 1]
    tie = M.hamming_metrics(total, relevant, map_at=map_k.values(), top_k=ranks)
    ts = tie.summary()
    hash_out: dict[str, Any] = {
        "map": _r(ts["map"]),
        "map_relevant_only": _r(ts["map_relevant_only"]),
    }
    order = None
    if params.database_order:
        order = M.database_order_metrics(q, db, ql, dl, map_at=map_k.values(), top_k=ranks)
        osum = order.summary()
        hash_out["map_database_order"] = _r(osum["map"])
        hash_out["map_database_order_relevant_only"] = _r(osum["map_relevant_only"])
    hash_out["map_at"] = _by_requested(map_k, ts["map_at"])
    if order is not None:
        hash_out["map_at_database_order"] = _by_requested(map_k, osum["map_at"])
    for key in ("precision_at", "recall_at", "ndcg_at"):
        hash_out[key] = _by_requested(top_k, ts[key])
    curve = M.radius_curve(total, relevant)
    rad = min(params.radius, n_bits)
    hash_out["within_radius"] = {
        "radius": rad,
        "precision": _r(curve["precision"][rad]),
        "recall": _r(curve["recall"][rad]),
        "coverage": _r(curve["coverage"][rad]),
    }

    out: dict[str, Any] = {
        "queries": len(q),
        "database": n_db,
        "queries_without_relevant": ts["queries_without_relevant"],
    }
    clipped = {str(k): v for c in (map_k, top_k) for k, v in sorted(c.items()) if k != v}
    if clipped:
        out["cutoffs_clipped"] = clipped
    out["hash"] = hash_out

    fs = None
    if fq is not None and fdb is not None:
        fm = M.cosine_metrics(fq, fdb, ql, dl, map_at=map_k.values(), top_k=ranks)
        fs = fm.summary()
        out["float"] = {
            "map": _r(fs["map"]),
            "map_relevant_only": _r(fs["map_relevant_only"]),
            "map_at": _by_requested(map_k, fs["map_at"]),
            **{
                key: _by_requested(top_k, fs[key])
                for key in ("precision_at", "recall_at", "ndcg_at")
            },
        }
        out["gap"] = {
            "map": _r(fs["map"] - ts["map"]),
            "map_at": _by_requested(
                map_k, {k: fs["map_at"][k] - ts["map_at"][k] for k in fs["map_at"]}
            ),
            **{
                key: _by_requested(top_k, {k: fs[key][k] - ts[key][k] for k in fs[key]})
                for key in ("precision_at", "recall_at", "ndcg_at")
            },
        }

    pr_rows = [
        {
            "radius": int(r),
            "precision": _r(curve["precision"][r]),
            "recall": _r(curve["recall"][r]),
            "coverage": _r(curve["coverage"][r]),
        }
        for r in range(n_bits + 1)
        if np.isfinite(curve["precision"][r])
    ]
    pk_rows = []
    for k in sorted(set(curve_k.values())):
        row: dict[str, Any] = {"k": k, "precision": _r(ts["precision_at"][k])}
        if order is not None:
            row["precision_database_order"] = _r(osum["precision_at"][k])
        if fs is not None:
            row["float_precision"] = _r(fs["precision_at"][k])
        pk_rows.append(row)
    for sub, rows in (("pr", pr_rows), ("pk", pk_rows)):
        path = plots / sub / f"{plot_name}.json"
        io.write_json(path, rows)
        written.add(path)
    out["plots"] = {"pr": f"pr/{plot_name}.json", "pk": f"pk/{plot_name}.json"}
    return out
