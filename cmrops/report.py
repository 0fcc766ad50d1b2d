"""What the dashboard shows, as plain functions over a project folder's pipeline outputs.

Every function takes the project root (where ``dvc.yaml`` lives) and returns a pandas
``DataFrame`` or a plain ``dict``, read from the files the stages wrote: the metrics JSONs, the
quarantine and sample tables, the codes, and the run log. Nothing here imports Streamlit; the
dashboard's loaders (``dashboards/data.py``) only cache these.

* A file that is not there yet gives an empty table or ``{}`` (the pages turn that into "run ...");
  :func:`missing` says which of a page's inputs are absent.
* A file that is there but unreadable raises :class:`ReportError`, naming the file and the
  command that rewrites it.

Which files and how they are read: :mod:`cmrops.report_files`; thumbnails, keyframe strips,
audio clips and previews of samples: :mod:`cmrops.report_media` (both re-exported here).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmrops.io import read_npy
from cmrops.media import MEDIA_KINDS
from cmrops.report_files import FILES as FILES
from cmrops.report_files import ReportError as ReportError
from cmrops.report_files import image_file as _image_file
from cmrops.report_files import missing as missing
from cmrops.report_files import path as _path
from cmrops.report_files import read_json as _json
from cmrops.report_files import read_table as _parquet
from cmrops.report_files import stamp as stamp
from cmrops.report_files import unreadable as _unreadable
from cmrops.report_media import AudioClip as AudioClip
from cmrops.report_media import Preview as Preview
from cmrops.report_media import Thumbnail as Thumbnail
from cmrops.report_media import audio_clip as audio_clip
from cmrops.report_media import audio_mime as audio_mime
from cmrops.report_media import media_of as media_of
from cmrops.report_media import preview as preview
from cmrops.report_media import thumbnail as thumbnail
from cmrops.report_media import video_strip as video_strip

__all__ = [
    "FILES",
    "AudioClip",
    "Preview",
    "ReportError",
    "Thumbnail",
    "audio_clip",
    "audio_mime",
    "bit_stats",
    "caption_lengths",
    "clean_rules",
    "code_health",
    "curves",
    "durations",
    "funnel",
    "headline",
    "history",
    "image_sizes",
    "label_agreement",
    "label_counts",
    "label_sources",
    "latest_run",
    "leakage",
    "media_of",
    "media_path",
    "missing",
    "model_names",
    "preview",
    "quarantine",
    "quarantine_counts",
    "retrieval_table",
    "review_queue",
    "split_balance",
    "split_sizes",
    "stamp",
    "thumbnail",
    "video_strip",
]


#: Quarantine tables in pipeline order: (stage, file key).
_QUARANTINE = (("collect", "raw_quarantine"), ("preprocess", "interim_quarantine"),
               ("clean", "clean_quarantine"))  # fmt: skip


# --------------------------------------------------------------------------- overview


def funnel(project: Path) -> pd.DataFrame:
    """Samples through the stages: one row per stage that ran, with ``in``, ``kept`` and
    ``quarantined`` (label and split drop nothing; split's ``kept`` is the samples assigned)."""
    raw, interim = _json(project, "raw_metrics"), _json(project, "interim_metrics")
    lab, quality = _json(project, "label_metrics"), _json(project, "quality")
    split = _json(project, "split")
    rows: list[tuple[str, Any, Any, Any]] = []
    if raw:
        rows.append(("collect", raw.get("inputs"), raw.get("kept"), raw.get("quarantined")))
    if interim:
        rows.append(("preprocess", interim.get("in"), interim.get("kept"),
                     interim.get("quarantined")))  # fmt: skip
    if lab:
        rows.append(("label", lab.get("samples"), lab.get("samples"), 0))
    if quality:
        rows.append(("clean", quality.get("inputs"), quality.get("kept"),
                     quality.get("quarantined")))  # fmt: skip
    if split:
        rows.append(("split", split.get("samples"), split.get("samples"), 0))
    df = pd.DataFrame(rows, columns=["stage", "in", "kept", "quarantined"])
    return df.astype({"in": "Int64", "kept": "Int64", "quarantined": "Int64"})


def headline(project: Path) -> dict[str, Any]:
    """The numbers at the top of the Overview ({} before any stage ran): samples in, kept
    after clean, quarantined in all, cleaning precision/recall on planted defects, leaking pairs,
    models evaluated and the best tie-aware hash mAP (with its model and direction)."""
    raw, quality = _json(project, "raw_metrics"), _json(project, "quality")
    split, retrieval = _json(project, "split"), _json(project, "retrieval")
    if not (raw or quality or split or retrieval):
        return {}
    counts = quarantine_counts(project)
    out: dict[str, Any] = {
        "samples_in": raw.get("inputs"),
        "kept": quality.get("kept"),
        "quarantined": int(counts["count"].sum()) if len(counts) else 0,
        "precision": (quality.get("synthetic") or {}).get("overall", {}).get("precision"),
        "recall": (quality.get("synthetic") or {}).get("overall", {}).get("recall"),
        "leaking_pairs": (split.get("leakage") or {}).get("total"),
        "models": len(retrieval.get("models") or {}),
        "best_map": None,
        "best_model": None,
        "best_direction": None,
    }
    table = retrieval_table(project)
    if len(table) and table["map"].notna().any():
        best = table.loc[table["map"].idxmax()]
        out.update(best_map=float(best["map"]), best_model=str(best["model"]),
                   best_direction=str(best["direction"]))  # fmt: skip
    return out


def latest_run(project: Path) -> dict[str, Any]:
    """The latest run in the run log: ``run_id``, ``data_version`` (of the project now, from
    ``dvc.lock`` and git; the one each stage saw is in ``stages``), ``started_at``,
    ``finished_at``, ``status`` (failed when any stage failed) and ``stages`` (a DataFrame:
    stage, status, duration_s, finished_at, data_version). {} when nothing is logged yet."""
    from cmrops import runlog

    runs = runlog.read_runs(project)
    if not runs:
        return {}
    run_id = runs[-1].run_id
    mine = [r for r in runs if r.run_id == run_id]
    stages = pd.DataFrame(
        [
            {
                "stage": r.stage,
                "status": r.status,
                "duration_s": r.duration_s,
                "finished_at": pd.Timestamp(r.finished_at, unit="s", tz="UTC"),
                "data_version": r.data_version,
            }
            for r in mine
        ]
    )
    return {
        "run_id": run_id,
        "data_version": runlog.data_version(project),
        "started_at": pd.Timestamp(min(r.started_at for r in mine), unit="s", tz="UTC"),
        "finished_at": pd.Timestamp(max(r.finished_at for r in mine), unit="s", tz="UTC"),
        "status": "failed" if any(r.status == "failed" for r in mine) else "success",
        "stages": stages,
    }


# --------------------------------------------------------------------------- data quality


def _evidence(text: Any) -> dict[str, Any]:
    if isinstance(text, Mapping):
        return dict(text)
    if not isinstance(text, str) or not text:
        return {}
    try:
        obj = json.loads(text)
    except ValueError:
        return {"text": text}
    return obj if isinstance(obj, dict) else {"value": obj}


def _image_paths(project: Path) -> dict[str, str]:
    """sample_id -> image path (under data/raw) from the raw and interim sample tables."""
    out: dict[str, str] = {}
    for key in ("raw_samples", "interim_samples"):
        df = _parquet(project, key, ["sample_id", "image_path"])
        if df is not None:
            out.update(zip(df["sample_id"], df["image_path"], strict=True))
    return out


def _captions(project: Path) -> dict[str, list[str]]:
    """sample_id -> its captions (as collected) from the raw and interim sample tables."""
    out: dict[str, list[str]] = {}
    for key in ("raw_samples", "interim_samples"):
        df = _parquet(project, key, ["sample_id", "captions"])
        if df is not None:
            out.update((s, list(c) if c is not None else []) for s, c in
                       zip(df["sample_id"], df["captions"], strict=True))  # fmt: skip
    return out


def media_path(project: Path, image_path: Any) -> str | None:
    """The file of a sample's ``image_path`` (relative to data/raw), or None."""
    return _image_file(project, image_path)


#: Evidence fields naming the other sample of a pair, the pair's distance, and a score.
_OTHER = ("kept", "duplicate_of", "matched")
_DISTANCE = ("phash_distance", "caption_distance", "distance")
_SCORE = ("similarity", "overlap", "aspect", "score")


def _first(ev: Mapping[str, Any], names: Iterable[str]) -> tuple[str | None, Any]:
    for n in names:
        if ev.get(n) is not None:
            return n, ev[n]
    return None, None


def quarantine(project: Path) -> pd.DataFrame:
    """Every quarantined sample, in pipeline order: stage, reason, sample_id, source,
    source_key, detail, evidence (the JSON text), image (file path or None), other_id / other_image
    (the kept duplicate, or the earlier copy), distance / distance_kind (pHash or caption
    Hamming distance of a duplicate pair), score / score_kind (mismatch similarity, label
    overlap, aspect ratio), captions (the sample's, as collected; [] when unknown) and
    other_captions (the other sample's)."""
    cols = ["stage", "reason", "sample_id", "source", "source_key", "detail", "evidence",
            "image", "other_id", "other_image", "distance", "distance_kind", "score",
            "score_kind", "captions", "other_captions"]  # fmt: skip
    tables = [(s, _parquet(project, k)) for s, k in _QUARANTINE]
    if all(t is None or t.empty for _, t in tables):
        return pd.DataFrame(columns=cols)
    paths = _image_paths(project)
    captions = _captions(project)
    rows = []
    for stage, t in tables:
        if t is None:
            continue
        for rec in t.to_dict("records"):
            ev = _evidence(rec.get("evidence"))
            sid = rec.get("sample_id") if isinstance(rec.get("sample_id"), str) else None
            _, other = _first(ev, _OTHER)
            dkind, dist = _first(ev, _DISTANCE)
            skind, score = _first(ev, _SCORE)
            img = ev.get("image_path") if isinstance(ev.get("image_path"), str) else None
            img = img or (paths.get(sid) if sid else None)
            rows.append({
                "stage": rec.get("stage") or stage,
                "reason": rec.get("reason"),
                "sample_id": sid,
                "source": rec.get("source"),
                "source_key": rec.get("source_key"),
                "detail": rec.get("detail"),
                "evidence": rec.get("evidence") if isinstance(rec.get("evidence"), str)
                else json.dumps(ev, sort_keys=True),
                "image": _image_file(project, img),
                "other_id": str(other) if other is not None else None,
                "other_image": _image_file(project, paths.get(str(other))) if other else None,
                "distance": float(dist) if isinstance(dist, int | float) else None,
                "distance_kind": dkind,
                "score": float(score) if isinstance(score, int | float) else None,
                "score_kind": skind,
                "captions": captions.get(sid, []) if sid else [],
                "other_captions": captions.get(str(other), []) if other else [],
            })  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def quarantine_counts(project: Path) -> pd.DataFrame:
    """Quarantined samples per stage and reason (stage, reason, count), counted from the
    quarantine tables, in pipeline order then by count."""
    q = quarantine(project)
    if q.empty:
        return pd.DataFrame({"stage": [], "reason": [], "count": []}).astype({"count": int})
    order = {s: i for i, (s, _) in enumerate(_QUARANTINE)}
    c = q.groupby(["stage", "reason"], sort=False).size().reset_index(name="count")
    c["_o"] = c["stage"].map(order).fillna(len(order))
    c = c.sort_values(["_o", "count", "reason"], ascending=[True, False, True])
    return c.drop(columns="_o").reset_index(drop=True)


def clean_rules(project: Path) -> pd.DataFrame:
    """The clean stage's rules in order: rule, status (run / off / not_run), drops, flagged,
    dropped, precision / recall on planted defects (synthetic sources), why (when not run)."""
    quality = _json(project, "quality")
    rules = quality.get("rules") or {}
    synth = ((quality.get("synthetic") or {}).get("rules")) or {}
    order = quality.get("rule_order") or list(rules)
    rows = []
    for name in order:
        r = rules.get(name, {})
        s = synth.get(name, {})
        rows.append({
            "rule": name, "status": r.get("status"), "drops": r.get("drops"),
            "flagged": r.get("flagged"), "dropped": r.get("dropped"),
            "precision": s.get("precision"), "recall": s.get("recall"), "why": r.get("why"),
        })  # fmt: skip
    df = pd.DataFrame(rows, columns=["rule", "status", "drops", "flagged", "dropped",
                                     "precision", "recall", "why"])  # fmt: skip
    return df.astype({"flagged": "Int64", "dropped": "Int64"})


def caption_lengths(project: Path) -> pd.DataFrame:
    """Tokens per caption (sample_id, tokens), from preprocess's token counts."""
    df = _parquet(project, "interim_samples", ["sample_id", "token_counts"])
    if df is None:
        return pd.DataFrame({"sample_id": [], "tokens": []})
    e = df.explode("token_counts").dropna(subset=["token_counts"])
    return pd.DataFrame(
        {"sample_id": e["sample_id"].to_numpy(), "tokens": e["token_counts"].astype(int).to_numpy()}
    )


def image_sizes(project: Path) -> pd.DataFrame:
    """Decoded image size per sample (sample_id, width, height, format, pixels)."""
    df = _parquet(project, "interim_samples", ["sample_id", "width", "height", "format"])
    if df is None:
        return pd.DataFrame(
            {"sample_id": [], "width": [], "height": [], "format": [], "pixels": []}
        )
    df = df.copy()
    df["pixels"] = df["width"].astype("int64") * df["height"].astype("int64")
    return df


def durations(project: Path) -> pd.DataFrame:
    """Decoded duration per video or audio clip (sample_id, duration_s); empty for images
    (and for sample tables written before video and audio)."""
    p = _path(project, "interim_samples")
    empty = pd.DataFrame({"sample_id": [], "duration_s": []})
    if not p.is_file():
        return empty
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(p).names
    except Exception as e:  # pyarrow raises several types for damaged files
        raise _unreadable(project, "interim_samples", e) from e
    if "duration_s" not in names:
        return empty
    df = _parquet(project, "interim_samples", ["sample_id", "duration_s"])
    assert df is not None
    return df.dropna(subset=["duration_s"]).reset_index(drop=True)


def label_counts(project: Path) -> pd.DataFrame:
    """Samples per label (label, samples), most frequent first, from ``labels.parquet``."""
    df = _parquet(project, "labels", ["sample_id", "label"])
    if df is None or df.empty:
        return pd.DataFrame({"label": [], "samples": []}).astype({"samples": int})
    c = df.groupby("label")["sample_id"].nunique().reset_index(name="samples")
    return c.sort_values(["samples", "label"], ascending=[False, True]).reset_index(drop=True)


def label_sources(project: Path) -> pd.DataFrame:
    """Labels by where they came from (source manual / auto / reviewed, method), counted from
    ``labels.parquet``: source, method, labels, samples."""
    df = _parquet(project, "labels", ["sample_id", "source", "method"])
    if df is None or df.empty:
        return pd.DataFrame({"source": [], "method": [], "labels": [], "samples": []})
    g = df.groupby(["source", "method"], dropna=False)
    out = g.size().reset_index(name="labels")
    out["samples"] = g["sample_id"].nunique().to_numpy()
    return out.sort_values("labels", ascending=False).reset_index(drop=True)


def label_agreement(project: Path) -> dict[str, pd.DataFrame]:
    """Agreement between labelling methods (label stage metrics): ``pairs`` (one row per pair of
    methods: samples, exact_match, mean_jaccard, mean_kappa, precision, recall) and
    ``per_label`` (pair, label, kappa); ``decided_by`` (samples per deciding source)."""
    lab = _json(project, "label_metrics")
    pairs, per_label = [], []
    for pair, a in (lab.get("agreement") or {}).items():
        pairs.append({"pair": pair, **{k: v for k, v in a.items() if not isinstance(v, dict)}})
        for label, kappa in (a.get("kappa_per_label") or {}).items():
            per_label.append({"pair": pair, "label": label, "kappa": kappa})
    decided = [{"decided_by": k, "samples": v} for k, v in (lab.get("decided_by") or {}).items()]
    return {
        "pairs": pd.DataFrame(pairs),
        "per_label": pd.DataFrame(per_label, columns=["pair", "label", "kappa"]),
        "decided_by": pd.DataFrame(decided, columns=["decided_by", "samples"]),
    }


def review_queue(project: Path) -> pd.DataFrame:
    """The label stage's review queue (``review_queue.csv``), with an ``image`` file column."""
    p = _path(project, "review_queue")
    if not p.is_file():
        return pd.DataFrame()
    try:
        df = pd.read_csv(p, keep_default_na=False, dtype={"sample_id": str, "answer": str})
    except Exception as e:
        raise _unreadable(project, "review_queue", e) from e
    if "image_path" in df:
        df["image"] = [_image_file(project, v) for v in df["image_path"]]
    return df


# --------------------------------------------------------------------------- splits


def split_sizes(project: Path) -> pd.DataFrame:
    """Samples per set (set, samples) as the split stage counted them."""
    sizes = (_json(project, "split").get("sizes")) or {}
    return pd.DataFrame({"set": list(sizes), "samples": list(sizes.values())})


def split_balance(project: Path) -> pd.DataFrame:
    """Label balance per set: label, set, samples, share (of the set's samples) and
    total_share (of all split samples) - a balanced split has share close to total_share."""
    split = _json(project, "split")
    per_label = ((split.get("labels") or {}).get("per_label")) or {}
    sizes = split.get("sizes") or {}
    n = split.get("samples") or 0
    rows = []
    for label, by_set in per_label.items():
        total = by_set.get("total", 0)
        for s, size in sizes.items():
            count = by_set.get(s, 0)
            rows.append({
                "label": label, "set": s, "samples": count,
                "share": count / size if size else None,
                "total_share": total / n if n else None,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=["label", "set", "samples", "share", "total_share"])


def leakage(project: Path) -> dict[str, Any]:
    """The split's leakage audit: ``total`` leaking near-duplicate pairs, ``pairs`` (a DataFrame
    between, kind, pairs), ``listed`` (the listed pairs, a DataFrame), ``radius`` and ``groups``."""
    split = _json(project, "split")
    leak = split.get("leakage") or {}
    pairs = [
        {"between": between, "kind": kind, "pairs": n}
        for between, by_kind in (leak.get("pairs") or {}).items()
        for kind, n in by_kind.items()
    ]
    return {
        "total": leak.get("total"),
        "pairs": pd.DataFrame(pairs, columns=["between", "kind", "pairs"]),
        "listed": pd.DataFrame(leak.get("listed") or []),
        "radius": leak.get("radius") or {},
        "groups": split.get("groups") or {},
        "protocol": split.get("protocol") or {},
    }


# --------------------------------------------------------------------------- retrieval


def _models(project: Path) -> dict[str, Any]:
    return _json(project, "retrieval").get("models") or {}


def model_names(project: Path) -> list[str]:
    """Evaluated models (``<method>-<bits>``), by method then bit length."""
    models = _models(project)
    return sorted(models, key=lambda m: (str(models[m].get("method", m)), _bits(models[m])))


def _bits(m: Mapping[str, Any]) -> int:
    return int(m.get("bits") or m.get("n_bits") or 0)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def retrieval_table(project: Path) -> pd.DataFrame:
    """One row per model and direction: model, method, bits, direction, queries, database,
    ``map`` (tie-aware, hash codes), ``map_database_order``, ``float_map`` (the float baseline),
    ``gap`` (float minus hash), then ``mAP@k`` and ``P@k`` of the hash codes."""
    models = _models(project)
    rows = []
    for name in model_names(project):
        m = models[name]
        for direction, d in (m.get("directions") or {}).items():
            h, f = d.get("hash") or {}, d.get("float") or {}
            row: dict[str, Any] = {
                "model": name, "method": m.get("method"), "bits": _bits(m),
                "direction": direction, "queries": d.get("queries"), "database": d.get("database"),
                "map": _num(h.get("map")), "map_database_order": _num(h.get("map_database_order")),
                "float_map": _num(f.get("map")), "gap": _num((d.get("gap") or {}).get("map")),
            }  # fmt: skip
            for k, v in sorted((h.get("map_at") or {}).items(), key=lambda kv: int(kv[0])):
                row[f"mAP@{k}"] = _num(v)
            for k, v in sorted((h.get("precision_at") or {}).items(), key=lambda kv: int(kv[0])):
                row[f"P@{k}"] = _num(v)
            rows.append(row)
    base = ["model", "method", "bits", "direction", "queries", "database", "map",
            "map_database_order", "float_map", "gap"]  # fmt: skip
    return pd.DataFrame(rows, columns=None if rows else base)


def curves(project: Path, kind: str) -> pd.DataFrame:
    """The DVC plot curves of every model and direction, long form. ``kind="pr"``: precision /
    recall within each Hamming radius (model, method, bits, direction, radius, recall,
    precision, coverage); ``kind="pk"``: precision at K (..., k, precision,
    precision_database_order, float_precision)."""
    if kind not in ("pr", "pk"):
        raise ValueError(f"kind must be 'pr' or 'pk', got {kind!r}")
    models = _models(project)
    frames = []
    for name in model_names(project):
        m = models[name]
        for direction, d in (m.get("directions") or {}).items():
            rel = (d.get("plots") or {}).get(kind)
            if not rel:
                continue
            p = Path(project) / "plots" / rel
            try:
                points = json.loads(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                raise ReportError(
                    f"{p} cannot be read ({e}); rerun `cmrops evaluate` (or `make run`)"
                ) from e
            df = pd.DataFrame(points)
            df.insert(0, "direction", direction)
            df.insert(0, "bits", _bits(m))
            df.insert(0, "method", m.get("method"))
            df.insert(0, "model", name)
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["model", "method", "bits", "direction"])
    return pd.concat(frames, ignore_index=True)


def history(project: Path) -> pd.DataFrame:
    """Every successful evaluate run in the run log (each ``make run``, ``dvc repro`` and
    ``dvc exp run`` that reached evaluate): run_id, finished_at, data_version, model, direction,
    map - oldest first."""
    from cmrops import runlog

    rows = []
    for r in runlog.read_runs(project):
        if r.stage != "evaluate" or r.status != "success":
            continue
        for key, value in r.metrics.items():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "map":
                rows.append({
                    "run_id": r.run_id,
                    "finished_at": pd.Timestamp(r.finished_at, unit="s", tz="UTC"),
                    "data_version": r.data_version, "model": parts[1], "direction": parts[2],
                    "map": value,
                })  # fmt: skip
    return pd.DataFrame(
        rows, columns=["run_id", "finished_at", "data_version", "model", "direction", "map"]
    )


# --------------------------------------------------------------------------- code health


def code_health(project: Path) -> pd.DataFrame:
    """Code health of the database codes as evaluate measured it, one row per model and
    modality: codes, balance_deviation (mean |P(bit=1) - 0.5|), constant_bits, worst_bit,
    bit_correlation (mean |Pearson| between non-constant bits), distinct buckets, largest bucket,
    bucket entropy and its maximum."""
    models = _models(project)
    rows = []
    for name in model_names(project):
        m = models[name]
        for modality, h in (m.get("code_health") or {}).items():
            bal, buckets = h.get("bit_balance") or {}, h.get("buckets") or {}
            rows.append({
                "model": name, "method": m.get("method"), "bits": _bits(m), "modality": modality,
                "codes": h.get("codes"),
                "balance_deviation": _num(bal.get("mean_abs_deviation")),
                "constant_bits": bal.get("constant_bits"), "worst_bit": bal.get("worst_bit"),
                "bit_correlation": _num(h.get("mean_abs_bit_correlation")),
                "distinct": buckets.get("distinct"), "largest_bucket": buckets.get("largest"),
                "entropy_bits": _num(buckets.get("entropy_bits")),
                "max_entropy_bits": _num(buckets.get("max_entropy_bits")),
            })  # fmt: skip
    return pd.DataFrame(rows)


def bit_stats(project: Path, model: str, modality: str, role: str = "database") -> dict[str, Any]:
    """Per-bit statistics of one model's codes (``data/codes/<model>/<modality>_<role>.npy``):
    ``balance`` (bit, p_one, deviation) and ``correlation`` (bit_i, bit_j, corr: the Pearson
    correlation of every pair of bits, NaN where a bit is constant), plus ``n_codes``/``n_bits``.
    In a video or audio data set the codes of that media are the ``image_*.npy`` files (train
    names the non-text side "image"; evaluate's code health names it by its media)."""
    folder = Path(project) / "data" / "codes" / model
    stem = "image" if modality in MEDIA_KINDS else modality
    meta_p, codes_p = folder / "meta.json", folder / f"{stem}_{role}.npy"
    if not codes_p.is_file() or not meta_p.is_file():
        raise ReportError(
            f"no codes at {codes_p}: run `cmrops train` (or `make run`) to write them"
        )
    try:
        meta = json.loads(meta_p.read_text(encoding="utf-8"))
        codes = read_npy(codes_p)
        n_bits = int(meta.get("n_bits") or meta["bits"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{folder} cannot be read ({e}); rerun `cmrops train`") from e
    from cmrops.codes import unpack_bits

    if codes.dtype != np.uint64 or codes.ndim != 2 or len(codes) == 0:
        raise ReportError(
            f"{codes_p}: expected non-empty packed uint64 codes, got {codes.dtype}{codes.shape}; "
            "rerun `cmrops train`"
        )
    bits = unpack_bits(codes, n_bits).astype(np.float64)
    p = bits.mean(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (
            np.corrcoef(bits, rowvar=False) if len(bits) > 1 else np.full((n_bits, n_bits), np.nan)
        )
    corr = np.atleast_2d(corr)
    corr[(p == 0) | (p == 1), :] = np.nan
    corr[:, (p == 0) | (p == 1)] = np.nan
    ii, jj = np.meshgrid(np.arange(n_bits), np.arange(n_bits), indexing="ij")
    return {
        "n_codes": len(codes),
        "n_bits": n_bits,
        "balance": pd.DataFrame(
            {"bit": np.arange(n_bits), "p_one": p, "deviation": np.abs(p - 0.5)}
        ),
        "correlation": pd.DataFrame(
            {"bit_i": ii.ravel(), "bit_j": jj.ravel(), "corr": corr.ravel()}
        ),
    }


