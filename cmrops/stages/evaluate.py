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
  naming another protocol or seed) are refused;
* ``<split>/manifests/`` (:mod:`cmrops.splitting.manifests`) - the sets as sample-id lists, their
  sha256s and the queries with a near-duplicate in the database. Without it the protocol card
  says so and the scores without near-duplicate queries are left out; a manifest whose query
  set is not the codes' query set is refused;
* ``<codes>/aligned-float/`` (``aligned_baseline``; optional) - the aligned float baseline:
  ``{image,text}_{query,database}_float.npy`` (float32 rows in one shared, aligned space, rows as
  ``rows.parquet``) and ``meta.json`` with ``"kind": "float_baseline"``, no packed codes. It is
  ranked by cosine similarity and reported as ``float_baseline``; every hashing model's
  direction gets ``vs_float_baseline`` (code mAP / aligned float mAP). Absent: no
  ``float_baseline`` field, a note under ``notes``;
* ``train_metrics`` (``metrics/train.json``; optional) - where each model's validation set came
  from (``val_from``), for the protocol card.

and writes ``metrics_path`` (``metrics/retrieval.json``) and DVC plot files under ``plots_dir``:
``pr/<model>_<direction>.json`` (rows ``{radius, precision, recall, coverage}``) and
``pk/<model>_<direction>.json`` (rows ``{k, precision, precision_database_order,
float_precision}``).

**Directions**: ``image_to_text`` (image queries, text database), ``text_to_image``, and on request
``image_to_image``, ``text_to_text``. In a video or audio data set (``media`` in the models'
``meta.json``) "image" is that media and the metrics, plots and code health say so:
``video_to_text``, ``text_to_video``, ``audio_to_text``, ``text_to_audio`` (params keep the
``image_*`` names).

**Relevance** (``relevance``): ``labels`` - a database item is relevant when it shares at least one
label with the query (labels with ``confidence >= min_confidence``); ``pair`` - for caption data,
only the query's own pair is relevant, so the database of ``image_to_text`` is the texts of the
query samples and of the database samples, **in sample_id order** (content hashes: database
order never puts the pair first), ``text_to_image`` likewise, and the unimodal directions are
skipped (the pair of a query would be itself); ``auto`` - ``pair`` when the label stage induced
its labels from the captions (``vocabulary.json`` ``"induced": true``: keyword labels restate the
captions, and a caption should find its own photo), else ``labels`` when some query and some
database sample have a label, else ``pair``. Whenever the primary relevance is ``pair`` and the
samples have labels, the same models are also evaluated under label relevance, beside it:
``label_relevance`` (``relevance``, ``float_baseline``, ``models`` as at the top level, without
plots or code health).

**Metrics** per model and direction (:mod:`cmrops.metrics` has the formulas and conventions):
tie-aware mAP over the whole ranking (a query with no relevant item counts as AP 0; the number of
such queries and the mAP over the others are given), the database-order mAP beside it (ties
broken by database row, what a stable sort gives), mAP@k for ``map_at``, P@K, R@K and NDCG@K for
``top_k`` (tie-aware), precision / recall within Hamming radius ``radius`` (the whole curve goes to
the plots), the same ranking metrics for the float baseline (cosine similarity of the continuous
outputs) and the gap (float minus hash); code health of each modality's database codes. Cut-offs
above the database size are clipped to it and listed under ``cutoffs_clipped``. Values are
rounded to 6 decimals. Per direction, ``near_duplicate_queries`` counts the queries that have a
near-duplicate in the database (from the manifests) and ``map_without_near_duplicate_queries``
(hash and float) is the mAP over the other queries: the leakage audit's effect on the score (with
no such query both mAPs are equal). With pair relevance, ``pair_ranks`` gives the caption
retrieval figures: R@K for ``pair_recall_at`` (R@1/5/10), the median and mean rank of the pair
(hash: tie-aware and database order; float: cosine).

**Significance** (``significance``, :mod:`cmrops.significance`): every two models of one code
length (``pairs: all``: every two) are compared per direction with a paired randomisation test
over the queries on the tie-aware per-query AP and R@K (``recall_at``), seeded, with a
bootstrap confidence interval of the difference and Holm-adjusted p-values per family, so the
table says which differences are real.

**Protocol card** (``protocol``): the split's protocol and seed, the set sizes, the relevance
rule, the model selection rule (validation split only, never the query set; where each model's
validation set came from), full mAP vs mAP@k with the cut-offs used, the tie conventions
(tie-aware primary, database order secondary), the manifests' sha256s and the number of
near-duplicate queries.

The inputs are read and checked by :mod:`cmrops.evaluation.inputs`, the card and the stated
conventions are :mod:`cmrops.evaluation.card`, the metric kernels :mod:`cmrops.metrics`; this
module ranks each model's codes and assembles the metrics file and the plots.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmrops import io
from cmrops import metrics as M
from cmrops import significance as sig
from cmrops.code_health import code_health
from cmrops.evaluation.card import DEFINITIONS, TIES, protocol_card
from cmrops.evaluation.inputs import (
    FLOAT_BASELINE,
    ROLES,
    check_meta,
    find_baseline,
    find_models,
    load_codes,
    load_float,
    load_manifests,
    load_rows,
    load_split,
    media_of,
    relevance_of,
    train_metrics_of,
)
from cmrops.splitting import manifests as manifest_lists

log = logging.getLogger(__name__)

STAGE = "evaluate"
Direction = Literal["image_to_text", "text_to_image", "image_to_image", "text_to_text"]
DIRECTIONS: dict[str, tuple[str, str]] = {
    "image_to_text": ("image", "text"),
    "text_to_image": ("text", "image"),
    "image_to_image": ("image", "image"),
    "text_to_text": ("text", "text"),
}
MODALITIES = ("image", "text")


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
    aligned_baseline: str | None = "aligned-float"  # <codes>/<this>: the aligned float baseline
    pair_recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])  # R@K, pair relevance
    models: list[str] = field(default_factory=list)  # <method>-<bits> folders; empty = all
    n_threads: int | None = None  # for the Rust kernel; None = the thread budget
    # paired tests between models over the queries (cmrops.significance): "significance"
    significance: sig.SignificanceParams = field(default_factory=sig.SignificanceParams)

    def __post_init__(self) -> None:
        if not self.directions:
            raise ValueError("directions: at least one")
        if len(set(self.directions)) != len(self.directions):
            raise ValueError(f"directions: repeated entries in {self.directions}")
        for name in ("map_at", "top_k", "pk_curve", "pair_recall_at"):
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
    """``cmrops evaluate --params P --codes C --labelled L --split S --metrics M --plots D
    [--train-metrics T]``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, EvaluateParams)
    m = run(
        params, args.codes, args.labelled, args.split, args.metrics, args.plots,
        train_metrics=getattr(args, "train_metrics", None),
    )  # fmt: skip
    card = m["protocol"]
    nd = card["near_duplicate_queries"]["count"]
    print(
        f"evaluate ({m['split']['name']}, seed {m['split']['seed']}, relevance "
        f"{m['relevance']['mode']}): {len(m['models'])} model(s); {card['sizes']['query']} "
        f"queries x {card['sizes']['database']} database, near-duplicate queries "
        f"{'unknown' if nd is None else nd}"
    )
    base = m.get("float_baseline")
    if base is not None:
        for direction, d in base["directions"].items():
            print(f"  {'aligned float':<14} {direction:<14} mAP {d['map']:.4f}")
    for name, model in m["models"].items():
        for direction, d in model["directions"].items():
            h, f = d["hash"], d.get("float", {})
            fl = f" | float {f['map']:.4f}" if f else ""
            vs = d.get("vs_float_baseline", {}).get("map")
            ratio = f" | {vs:.1%} of aligned float" if vs is not None else ""
            print(
                f"  {name:<14} {direction:<14} mAP {h['map']:.4f} (database order "
                f"{h.get('map_database_order', float('nan')):.4f}){fl}{ratio}  "
                f"[{d['queries']} x {d['database']}]"
            )
    for direction, why in m.get("skipped", {}).items():
        print(f"  {direction} skipped: {why}")
    for what, note in m.get("notes", {}).items():
        print(f"  note ({what}): {note}")
    return 0


def run(
    params: EvaluateParams,
    codes_dir: str | os.PathLike[str],
    labelled_dir: str | os.PathLike[str] | None,
    split_dir: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    plots_dir: str | os.PathLike[str],
    *,
    train_metrics: str | os.PathLike[str] | None = None,
    per_query: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate every model under ``codes_dir`` (see module docstring); returns the metrics.
    ``train_metrics`` (train's metrics JSON) defaults to ``<codes>/train.json`` when present.
    ``per_query``, when given, receives each model's per-query values by direction
    (:func:`cmrops.significance.ranking_values`: what paired comparisons of runs need)."""
    codes = Path(codes_dir)
    query_ids, database_ids = load_rows(codes)
    split = load_split(Path(split_dir) / "assignments.parquet", query_ids, database_ids)
    lists = load_manifests(Path(split_dir), query_ids)
    relevance = relevance_of(params, labelled_dir, query_ids, database_ids)
    models = find_models(codes, params.models)
    plots = Path(plots_dir)
    notes: dict[str, str] = {}
    if lists is None:
        notes["manifests"] = (
            f"{Path(split_dir) / manifest_lists.MANIFEST_DIR}: not found - re-run `cmrops split` "
            "to get the sample-id lists and the scores without near-duplicate queries"
        )
    near_dup = (
        None
        if lists is None
        else np.isin(np.asarray(query_ids), np.asarray(lists["near_duplicate_queries"], dtype=str))
    )
    media = media_of(models)
    ctx = _Context(params, query_ids, database_ids, relevance, near_dup, plots, set(), {}, media)

    metrics: dict[str, Any] = {"stage": STAGE}
    baseline = find_baseline(codes, params, split, len(query_ids), len(database_ids), notes)
    for _, folder, meta in models:
        check_meta(folder, meta, split)
    base_section, out_models = _evaluate_all(ctx, baseline, models)
    if base_section is not None:
        metrics["float_baseline"] = base_section
    second = relevance.get("secondary")
    if second is not None:  # label relevance beside pair relevance: the same models, no plots
        ctx2 = _Context(
            params, query_ids, database_ids, second, near_dup, plots, set(), {}, media, True
        )
        base2, models2 = _evaluate_all(ctx2, baseline, models)
        metrics["label_relevance"] = {
            "relevance": second["stamp"],
            **({"float_baseline": base2} if base2 is not None else {}),
            "models": models2,
        }
    metrics.update(
        split=split["stamp"],
        protocol=protocol_card(
            params, split, lists, relevance, models, train_metrics_of(codes, train_metrics),
            len(query_ids), len(database_ids),
        ),
        relevance=relevance["stamp"],
        ties=TIES,
        definitions=DEFINITIONS,
        media=media,
        directions=[ctx.name(d) for d in params.directions],
        models=out_models,
    )  # fmt: skip
    if params.significance.enabled and len(out_models) > 1:
        bits = {name: int(m["n_bits"]) for name, m in out_models.items()}
        metrics["significance"] = sig.retrieval_comparisons(ctx.per_query, bits,
                                                            params.significance)  # fmt: skip
    if ctx.skipped:
        metrics["skipped"] = ctx.skipped
    if notes:
        metrics["notes"] = notes
    for sub in ("pr", "pk"):  # plots of models no longer present would look current
        for stale in sorted((plots / sub).glob("*.json")) if (plots / sub).is_dir() else []:
            if stale not in ctx.written:
                stale.unlink()
    io.write_json(metrics_path, metrics)
    if per_query is not None:
        per_query.update(ctx.per_query)
    return metrics


def _evaluate_all(
    ctx: _Context,
    baseline: tuple[Path, dict[str, Any]] | None,
    models: list[tuple[str, Path, dict[str, Any]]],
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The aligned float baseline's section (None without one) and every model's, under the
    relevance of ``ctx``."""
    base = _evaluate_baseline(ctx, *baseline) if baseline is not None else None
    base_dirs = base["directions"] if base is not None else {}
    out: dict[str, Any] = {}
    for name, folder, meta in models:
        t0 = time.perf_counter()
        out[name] = _evaluate_model(ctx, name, folder, meta, base_dirs)
        log.info("evaluated %s (%s) in %.1fs", name, ctx.relevance["mode"],
                 time.perf_counter() - t0)  # fmt: skip
    return base, out


@dataclass
class _Context:
    """What every model's evaluation shares."""

    params: EvaluateParams
    query_ids: list[str]
    database_ids: list[str]
    relevance: dict[str, Any]
    near_dup: np.ndarray | None  # (queries,) bool: has a near-duplicate in the database
    plots: Path
    written: set[Path]
    skipped: dict[str, str]
    media: str = "image"  # the "image" side of the codes: image, video or audio
    secondary: bool = False  # the label relevance beside pair relevance: no plots, no health
    # model -> direction -> per-query values (cmrops.significance.ranking_values)
    per_query: dict[str, dict[str, Any]] = field(default_factory=dict)
    gallery: np.ndarray = field(init=False)  # pair relevance: ranked rows in sample_id order
    gallery_ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        ids = np.asarray([*self.query_ids, *self.database_ids])
        # pair relevance ranks every sample's other modality in sample_id order (content hashes):
        # a stable sort then breaks ties in an order unrelated to which item is the pair
        self.gallery = np.argsort(ids, kind="stable")
        self.gallery_ids = ids[self.gallery]

    def name(self, direction: str) -> str:
        """A direction (or modality) as reported: ``image_to_text`` is ``video_to_text`` in a
        video data set."""
        return direction.replace("image", self.media)

    @property
    def pair(self) -> bool:
        return bool(self.relevance["mode"] == "pair")

    def directions(self) -> list[str]:
        """The requested directions that the relevance allows (the others go to skipped)."""
        wanted = []
        for d in self.params.directions:
            if self.pair and DIRECTIONS[d][0] == DIRECTIONS[d][1]:
                self.skipped[self.name(d)] = (
                    "pair relevance: the only relevant item of a query would be itself"
                )
            else:
                wanted.append(d)
        return wanted

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Query and (ranked) database relevance labels of a cross-modal direction."""
        if self.pair:
            return M.pair_labels(self.query_ids, list(self.gallery_ids))
        return self.relevance["query_labels"], self.relevance["database_labels"]

    def ranked(self, x: dict[tuple[str, str], np.ndarray], qm: str, dm: str):
        """Query rows of modality ``qm`` and the database rows of ``dm`` they rank (with pair
        relevance: the query and the database samples' ``dm`` rows, in sample_id order)."""
        db = x[dm, "database"]
        if self.pair:
            db = np.concatenate([x[dm, "query"], db])[self.gallery]
        return x[qm, "query"], db

    def cutoffs(self, n_db: int) -> dict[str, dict[int, int]]:
        p = self.params
        return {
            "map_at": M.clip_cutoffs(p.map_at, n_db),
            "top_k": M.clip_cutoffs(p.top_k, n_db),
            "pk_curve": M.clip_cutoffs(p.pk_curve, n_db),
            "pair_recall_at": M.clip_cutoffs(p.pair_recall_at, n_db),
        }


# --------------------------------------------------------------------------- evaluation


def _r(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if not np.isfinite(x) else round(x, 6)


def _by_requested(clip: dict[int, int], values: dict[int, Any]) -> dict[str, float | None]:
    return {str(k): _r(values[v]) for k, v in sorted(clip.items())}


def _evaluate_model(
    ctx: _Context, name: str, folder: Path, meta: dict[str, Any], base: dict[str, Any]
) -> dict[str, Any]:
    params = ctx.params
    n_bits = int(meta.get("n_bits", meta.get("bits")))
    counts = {"query": len(ctx.query_ids), "database": len(ctx.database_ids)}
    wanted = ctx.directions()
    used = sorted({m for d in wanted for m in DIRECTIONS[d]})
    codes = {
        (m, role): load_codes(folder / f"{m}_{role}.npy", counts[role], n_bits)
        for m in used
        for role in ROLES
    }
    floats = (
        {
            (m, role): load_float(folder / f"{m}_{role}_float.npy", counts[role])
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
        "code_health": {
            ctx.name(m): _health(code_health(codes[m, "database"], n_bits)) for m in used
        },
        "directions": {},
    }
    if ctx.secondary:  # beside the primary relevance: the code health is the same
        entry = {"method": entry["method"], "bits": entry["bits"], "directions": {}}
    ql, dl = ctx.labels()
    for direction in wanted:
        qm, dm = DIRECTIONS[direction]
        q, db = ctx.ranked(codes, qm, dm)
        fq, fdb = ctx.ranked(floats, qm, dm) if floats else (None, None)
        key = ctx.name(direction)
        out = _evaluate_direction(ctx, f"{name}_{key}", n_bits, q, db, fq, fdb, ql, dl)
        ctx.per_query.setdefault(name, {})[key] = ctx.per_query.pop(f"{name}_{key}")
        if key in base:
            out["vs_float_baseline"] = _ratios(out["hash"], base[key])
        entry["directions"][key] = out
    return entry


def _evaluate_baseline(ctx: _Context, folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The aligned float baseline per direction (cosine ranking)."""
    counts = {"query": len(ctx.query_ids), "database": len(ctx.database_ids)}
    wanted = ctx.directions()
    used = sorted({m for d in wanted for m in DIRECTIONS[d]})
    vectors = {
        (m, role): load_float(folder / f"{m}_{role}_float.npy", counts[role])
        for m in used
        for role in ROLES
    }
    ql, dl = ctx.labels()
    out: dict[str, Any] = {
        "folder": folder.name,
        "kind": FLOAT_BASELINE,
        "method": meta.get("method"),
        "alignment": meta.get("alignment"),
        "dim": int(vectors[used[0], "query"].shape[1]) if used else None,
        "directions": {},
    }
    for direction in wanted:
        qm, dm = DIRECTIONS[direction]
        fq, fdb = ctx.ranked(vectors, qm, dm)
        cut = ctx.cutoffs(len(fdb))
        section, _ = _float_section(ctx, fq, fdb, ql, dl, cut)
        out["directions"][ctx.name(direction)] = {
            "queries": len(fq),
            "database": len(fdb),
            **_near_dup_count(ctx),
            **section,
        }
    return out


def _ratios(hash_out: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Hash (tie-aware) / aligned float baseline, for mAP and each mAP@k."""

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else _r(a / b)

    return {
        "map": ratio(hash_out["map"], base["map"]),
        "map_at": {k: ratio(v, base["map_at"].get(k)) for k, v in hash_out["map_at"].items()},
        "float_baseline_map": base["map"],
    }


def _near_dup_count(ctx: _Context) -> dict[str, Any]:
    return {"near_duplicate_queries": None if ctx.near_dup is None else int(ctx.near_dup.sum())}


def _without_near_dup(ctx: _Context, m: M.RankingMetrics) -> float | None:
    """mAP over the queries without a near-duplicate in the database (None: unknown, or every
    query has one)."""
    if ctx.near_dup is None or ctx.near_dup.all():
        return None
    return _r(m.without(ctx.near_dup).summary()["map"])


def _pair_ranks(m: M.RankingMetrics, cut: dict[int, int]) -> dict[str, Any]:
    rs = m.rank_summary()
    return {
        "recall_at": _by_requested(cut, rs["recall_at"]),
        "median_rank": _r(rs["median_rank"]),
        "mean_rank": _r(rs["mean_rank"]),
    }


def _float_section(
    ctx: _Context,
    fq: np.ndarray,
    fdb: np.ndarray,
    ql: np.ndarray,
    dl: np.ndarray,
    cut: dict[str, dict[int, int]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Cosine-ranking metrics of float vectors (a model's float outputs or the aligned
    baseline), and the raw summary."""
    map_k, top_k = cut["map_at"], cut["top_k"]
    fm = M.cosine_metrics(fq, fdb, ql, dl, map_at=map_k.values(), top_k=_ranks(cut))
    fs = fm.summary()
    out = _map_entries(ctx, fm, fs)
    out["map_at"] = _by_requested(map_k, fs["map_at"])
    for key in ("precision_at", "recall_at", "ndcg_at"):
        out[key] = _by_requested(top_k, fs[key])
    if ctx.pair:
        out["pair_ranks"] = _pair_ranks(fm, cut["pair_recall_at"])
    return out, fs


def _ranks(cut: dict[str, dict[int, int]]) -> set[int]:
    """Every clipped rank cut-off some metric needs (P@K, R@K, NDCG@K, the curve, pair R@K)."""
    return set().union(*(cut[k].values() for k in ("top_k", "pk_curve", "pair_recall_at")))


def _map_entries(ctx: _Context, metrics: Any, summary: dict[str, Any]) -> dict[str, Any]:
    """Full mAP, mAP over queries with a relevant item, and mAP without near-duplicate queries."""
    out: dict[str, Any] = {
        "map": _r(summary["map"]),
        "map_relevant_only": _r(summary["map_relevant_only"]),
    }
    if ctx.near_dup is not None:
        out["map_without_near_duplicate_queries"] = _without_near_dup(ctx, metrics)
    return out


def _health(h: dict[str, Any]) -> dict[str, Any]:
    def rnd(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: rnd(x) for k, x in v.items()}
        return _r(v) if isinstance(v, float) else v

    return rnd(h)


def _evaluate_direction(
    ctx: _Context,
    plot_name: str,
    n_bits: int,
    q: np.ndarray,
    db: np.ndarray,
    fq: np.ndarray | None,
    fdb: np.ndarray | None,
    ql: np.ndarray,
    dl: np.ndarray,
) -> dict[str, Any]:
    params = ctx.params
    n_db = len(db)
    cut = ctx.cutoffs(n_db)
    map_k, top_k, curve_k, pair_k = (
        cut["map_at"],
        cut["top_k"],
        cut["pk_curve"],
        cut["pair_recall_at"],
    )
    ranks = _ranks(cut)

    total, relevant = M.histograms(q, db, ql, dl, n_threads=params.n_threads)
    assert not total[:, n_bits + 1 :].any(), "bits past n_bits were checked to be zero"
    total, relevant = total[:, : n_bits + 1], relevant[:, : n_bits + 1]
    tie = M.hamming_metrics(total, relevant, map_at=map_k.values(), top_k=ranks)
    ctx.per_query[plot_name] = sig.ranking_values(tie, params.significance.recall_at, n_db)
    ts = tie.summary()
    hash_out = _map_entries(ctx, tie, ts)
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
    if ctx.pair:
        hash_out["pair_ranks"] = {"tie_aware": _pair_ranks(tie, pair_k)}
        if order is not None:
            hash_out["pair_ranks"]["database_order"] = _pair_ranks(order, pair_k)
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
        **_near_dup_count(ctx),
    }
    clipped = {str(k): v for c in (map_k, top_k, pair_k) for k, v in sorted(c.items()) if k != v}
    if clipped:
        out["cutoffs_clipped"] = clipped
    out["hash"] = hash_out

    fs = None
    if fq is not None and fdb is not None:
        out["float"], fs = _float_section(ctx, fq, fdb, ql, dl, cut)
        out["gap"] = {
            "map": _r(fs["map"] - ts["map"]),
            "map_at": _by_requested(
                map_k, {k: fs["map_at"][k] - ts["map_at"][k] for k in fs["map_at"]}
            ),
            **{
                key: _by_requested(top_k, {k: fs[key][k] - ts[key][k] for k in top_k.values()})
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
    if ctx.secondary:  # the plots are of the primary relevance
        return out
    for sub, rows in (("pr", pr_rows), ("pk", pk_rows)):
        path = ctx.plots / sub / f"{plot_name}.json"
        io.write_json(path, rows)
        ctx.written.add(path)
    out["plots"] = {"pr": f"pr/{plot_name}.json", "pk": f"pk/{plot_name}.json"}
    return out
