"""The data card of a release: what it holds, where it came from, what was left out and why, how
it was split and labelled, how well it retrieves, what it cannot be used for, how to cite it.

Generated from the release alone - its record (metrics of every stage, params, ``dvc.lock``) and
its outputs read by their hashes (:class:`cmrops.release_data.ReleaseData`: the quarantine
tables for an example of every reason, the clean samples for the composition) - as
``datacard.json`` (the figures) and ``datacard.md`` (the same in the structure of a Hugging Face
dataset card, whose sections follow Gebru et al.'s *Datasheets for Datasets*: details, uses,
structure, creation with source data and annotations, personal information, bias and
limitations, evaluation, citation, contact). Both are attached to the release record
(:func:`attach_card`, called by the DAG's ``version`` task for every release) and copied into
every export; the HF export's ``README.md`` is the same card with the YAML header the Hub reads.

What a person must say - the data set's name, description, licences per source, citation,
contact for withdrawal requests, limitations known to them - comes from the ``datacard:``
section of the release's params (:class:`DatacardParams`); everything else is measured.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrops import io
from cmrops.releases import Release

log = logging.getLogger(__name__)

__all__ = ["DatacardParams", "attach_card", "build", "for_release", "markdown"]

SCHEMA = "cmrops-datacard/1"
JSON_NAME, MD_NAME = "datacard.json", "datacard.md"
QUARANTINES = (("collect", "data/raw/quarantine.parquet"),
               ("preprocess", "data/interim/quarantine.parquet"),
               ("clean", "data/clean/quarantine.parquet"))  # fmt: skip
ABLATION = "ablation.json"


@dataclass(frozen=True)
class DatacardParams:
    """The ``datacard:`` section of params.yaml: what only a person can say about the data."""

    name: str = "cmrops-dataset"
    description: str = ""
    homepage: str | None = None
    contact: str | None = None  # where questions and withdrawal requests go
    authors: list[str] = field(default_factory=list)
    licenses: dict[str, str] = field(default_factory=dict)  # source name -> licence (SPDX id)
    citation: str | None = None  # BibTeX; null: one is generated from the name and release
    limitations: list[str] = field(default_factory=list)  # beside the measured ones


def _params(rel: Release) -> DatacardParams:
    from cmrops.params import ParamsError, load_section

    try:
        return load_section(rel.file("params.yaml"), "datacard", DatacardParams)
    except (ParamsError, ValueError) as e:  # a release's params are what they were
        log.warning("release %s: datacard params not readable (%s); defaults used", rel.id, e)
        return DatacardParams()


# --------------------------------------------------------------------------- building


def build(
    project: str | os.PathLike[str], rel: Release, remote: str | None = None
) -> dict[str, Any]:
    """The card of release ``rel`` as a JSON-ready dict (no wall-clock time in it: the same
    release gives the same card)."""
    from cmrops.release_data import ReleaseData

    data = ReleaseData(project, rel, remote)
    p = _params(rel)

    def metrics(path: str) -> dict[str, Any]:
        return data.read_json(path) or {}

    raw, interim = metrics("data/raw/metrics.json"), metrics("data/interim/metrics.json")
    quality, split = metrics("metrics/quality.json"), metrics("metrics/split.json")
    labelled, align = metrics("data/labelled/metrics.json"), metrics("data/align/metrics.json")
    retrieval = metrics("metrics/retrieval.json")
    comp, per_source = _composition(data, p)
    quarantine = _quarantine(data)
    card: dict[str, Any] = {
        "schema": SCHEMA,
        "name": p.name,
        "description": p.description,
        "homepage": p.homepage,
        "contact": p.contact,
        "authors": list(p.authors),
        "release": _provenance(rel),
        "sources": _sources(raw, per_source, p),
        "licenses": _licence_counts(per_source),
        "composition": comp,
        "quarantine": quarantine,
        "withdrawn": _withdrawn(quarantine),
        "funnel": {"collected": raw.get("inputs"), "after_collect": raw.get("kept"),
                   "after_preprocess": interim.get("kept"), "after_clean": quality.get("kept")},
        "cleaning": _cleaning(quality),
        "splits": _splits(split, retrieval),
        "labels": _labels(labelled),
        "alignment": _alignment(align),
        "retrieval": _retrieval(retrieval),
        "ablation": _ablation(rel),
    }
    card["limitations"] = _limitations(card, quality, p)
    card["citation"] = p.citation or _bibtex(p, rel)
    return card


def _provenance(rel: Release) -> dict[str, Any]:
    out = {"id": rel.id, "created": rel.created, "data_version": rel.data_version,
           "run_id": rel.run_id}  # fmt: skip
    for name in ("dvc.lock", "params.yaml"):
        if name in rel.files:
            out[f"{name.replace('.', '_')}_sha256"] = rel.files[name]
    if rel.git:
        out["git"] = {k: rel.git.get(k) for k in ("tag", "commit")}
    return out


def _composition(data: Any, p: DatacardParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """Counts and sizes of the clean samples, and per source: samples and licence."""
    from cmrops.export.stream import CLEAN

    cols = ["source", "captions", "labels", "media", "format", "width", "height", "image_bytes",
            "duration_s", "extra"]  # fmt: skip
    media: Counter[str] = Counter()
    formats: Counter[str] = Counter()
    caps: list[int] = []
    sizes: dict[str, list[float]] = {"width": [], "height": [], "bytes": [], "duration_s": []}
    per_source: dict[str, dict[str, Any]] = {}
    if not data.has(CLEAN):
        return {"samples": 0, "note": "the run did not reach clean"}, {}
    for batch in io.iter_parquet(data.path(CLEAN), columns=cols, batch_rows=8192):
        for r in batch.to_pylist():
            media[r["media"] or "image"] += 1
            formats[str(r["format"])] += 1
            caps.append(len(r["captions"] or []))
            for key, col in (("width", "width"), ("height", "height"), ("bytes", "image_bytes"),
                             ("duration_s", "duration_s")):  # fmt: skip
                if r[col] is not None:
                    sizes[key].append(float(r[col]))
            src = per_source.setdefault(r["source"], {"samples": 0, "licenses": Counter()})
            src["samples"] += 1
            src["licenses"][_sample_licence(r["extra"])] += 1
    for name, s in per_source.items():
        stated = p.licenses.get(name)
        found = {k: v for k, v in s["licenses"].items() if k is not None}
        if stated:
            s["license"], s["license_from"] = stated, "params datacard.licenses"
        elif len(found) == 1 and sum(found.values()) == s["samples"]:
            s["license"], s["license_from"] = next(iter(found)), "the samples' own licence field"
        else:
            s["license"], s["license_from"] = "unknown", "not stated (datacard.licenses)"
        s["licenses_in_samples"] = {str(k): v for k, v in sorted(found.items())}
        del s["licenses"]
    n = len(caps)
    comp = {
        "samples": n,
        "media": media.most_common(1)[0][0] if media else None,
        "media_counts": dict(media),
        "formats": dict(sorted(formats.items())),
        "captions": {"total": int(sum(caps)), **_stats(caps)},
        "sizes": {k: _stats(v) for k, v in sizes.items() if v},
    }
    return comp, per_source


def _withdrawn(quarantine: dict[str, Any]) -> int:
    return sum(int(st.get("withdrawn", {}).get("count", 0)) for st in quarantine["stages"].values())


def _licence_counts(per_source: dict[str, Any]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for s in per_source.values():
        counts[s["license"]] += s["samples"]
    return dict(sorted(counts.items()))


def _sample_licence(extra: str | None) -> str | None:
    if not extra:
        return None
    try:
        d = json.loads(extra)
    except ValueError:
        return None
    for key in ("license", "licence", "license_name", "license_url"):
        if isinstance(d, dict) and d.get(key) not in (None, ""):
            return str(d[key])
    return None


def _stats(values: list[float] | list[int]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, np.float64)
    return {"min": round(float(a.min()), 3), "median": round(float(np.median(a)), 3),
            "mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3)}  # fmt: skip


def _sources(raw: dict[str, Any], per_source: dict[str, Any], p: DatacardParams) -> list[Any]:
    out = []
    for name, s in (raw.get("sources") or {}).items():
        final = per_source.get(name, {})
        out.append({
            "name": name, "kind": s.get("kind"), "inputs": s.get("inputs"),
            "kept_by_collect": s.get("kept"), "samples": final.get("samples", 0),
            "license": final.get("license", p.licenses.get(name, "unknown")),
            "license_from": final.get("license_from", "params datacard.licenses"),
            "licenses_in_samples": final.get("licenses_in_samples", {}),
            "quarantined_by_reason": s.get("quarantined_by_reason", {}),
            "downloads": s.get("downloads"),
        })  # fmt: skip
    return out


def _quarantine(data: Any) -> dict[str, Any]:
    """Every reason of every stage with its count and the first example (by sample id, or
    source:key when no sample was formed) with its detail."""
    stages: dict[str, dict[str, Any]] = {}
    for stage, rel in QUARANTINES:
        if not data.has(rel):
            continue
        reasons: dict[str, Any] = {}
        cols = ["sample_id", "source", "source_key", "reason", "detail"]
        for batch in io.iter_parquet(data.path(rel), columns=cols):
            for r in batch.to_pylist():
                e = reasons.setdefault(r["reason"], {"count": 0})
                e["count"] += 1
                example = r["sample_id"] or f"{r['source']}:{r['source_key']}"
                if "example" not in e or example < e["example"]:
                    e["example"], e["detail"] = example, r["detail"]
        stages[stage] = dict(sorted(reasons.items()))
    total = sum(e["count"] for st in stages.values() for e in st.values())
    return {"total": total, "stages": stages}


def _cleaning(q: dict[str, Any]) -> dict[str, Any]:
    rules = {}
    for name, r in (q.get("rules") or {}).items():
        rules[name] = {k: r.get(k) for k in ("status", "dropped", "flagged", "threshold", "why")
                       if r.get(k) is not None}  # fmt: skip
    out: dict[str, Any] = {"rule_order": q.get("rule_order"), "rules": rules}
    overall = (q.get("synthetic") or {}).get("overall")
    if overall:
        out["planted_defects"] = overall
    return out


def _splits(s: dict[str, Any], retrieval: dict[str, Any]) -> dict[str, Any]:
    if not s:
        return {}
    leak = s.get("leakage") or {}
    nd = ((retrieval.get("protocol") or {}).get("near_duplicate_queries") or {}).get("count")
    return {
        "protocol": s.get("protocol"), "seed": s.get("seed"), "mode": s.get("mode"),
        "sizes": s.get("sizes"), "sizes_chosen": s.get("sizes_chosen"),
        "groups": (s.get("groups") or {}).get("count"),
        "stratified": s.get("stratified"),
        "leakage": {"total": leak.get("total"), "pairs": leak.get("pairs"),
                    "radius": leak.get("radius")},
        "near_duplicate_queries": nd,
        "labels_missing_from_a_set": ((s.get("labels") or {}).get("missing_from_a_set")),
    }  # fmt: skip


def _labels(m: dict[str, Any]) -> dict[str, Any]:
    if not m:
        return {}
    agreement = {}
    for pair, a in (m.get("agreement") or {}).items():
        if isinstance(a, dict):
            agreement[pair] = {k: a.get(k) for k in ("samples", "exact_match", "mean_kappa",
                                                     "mean_jaccard", "precision", "recall")
                               if a.get(k) is not None}  # fmt: skip
    per_label = m.get("per_label") or {}
    return {
        "samples": m.get("samples"), "labelled": m.get("labelled"),
        "unlabelled": m.get("unlabelled"), "vocabulary": len(per_label),
        "decided_by": m.get("decided_by"), "per_method": m.get("per_method"),
        "per_label": per_label, "agreement": agreement,
        "review_queue": (m.get("review") or {}).get("queue"),
    }  # fmt: skip


def _alignment(a: dict[str, Any]) -> dict[str, Any]:
    if not a:
        return {}
    hold = a.get("holdout") or {}
    return {
        "kind": a.get("kind"), "why": a.get("why"), "pairs": a.get("pairs"),
        "threshold": a.get("threshold"),
        "holdout": {k: hold.get(k) for k in ("pairs", "r1_i2t", "r1_t2i", "swapped_auroc", "loss")
                    if hold.get(k) is not None},
        "out_of_fold_swapped_auroc": (a.get("out_of_fold") or {}).get("swapped_auroc"),
    }  # fmt: skip


def _retrieval(r: dict[str, Any]) -> dict[str, Any]:
    if not r:
        return {}
    models = {}
    for name, m in (r.get("models") or {}).items():
        models[name] = {d: {"map": (v.get("hash") or {}).get("map"),
                            "map_at": (v.get("hash") or {}).get("map_at"),
                            "recall_at": (v.get("hash") or {}).get("recall_at")}
                        for d, v in (m.get("directions") or {}).items()}  # fmt: skip
    real = []
    for direction, fam in ((r.get("significance") or {}).get("directions") or {}).items():
        for metric, pairs in fam.items():
            for key, t in pairs.items():
                if t.get("significant"):
                    real.append({"direction": direction, "metric": metric, "pair": key,
                                 "delta": t.get("delta"), "p_holm": t.get("p_holm")})  # fmt: skip
    card = r.get("protocol") or {}
    return {
        "relevance": r.get("relevance"),
        "directions": r.get("directions"),
        "models": models,
        "float_baseline": {d: v.get("map") for d, v in
                           ((r.get("float_baseline") or {}).get("directions") or {}).items()},
        "protocol": {k: card.get(k) for k in ("split", "sizes", "relevance", "ties", "map",
                                             "near_duplicate_queries", "manifests")},
        "significant_differences": real,
        "significance_method": (r.get("significance") or {}).get("method"),
    }  # fmt: skip


def _ablation(rel: Release) -> dict[str, Any] | None:
    path = rel.attachment(ABLATION)
    if path is None:
        return None
    a = json.loads(path.read_text(encoding="utf-8"))
    return {k: a.get(k) for k in ("models", "directions", "design", "rules", "queries")}


def _limitations(card: dict[str, Any], q: dict[str, Any], p: DatacardParams) -> list[str]:
    out = []
    kinds = {s["kind"] for s in card["sources"]}
    if "synthetic" in kinds:
        out.append("Synthetic: rendered shape scenes with planted defects, for testing the "
                   "pipeline; figures on it say nothing about real photos.")  # fmt: skip
    for name, why in (q.get("not_run") or {}).items():
        out.append(f"Cleaning rule {name} did not run: {why}.")
    lab = card["labels"]
    if lab.get("per_method") and set(lab["per_method"]) - {"provided", "manual", "review"}:
        out.append("Some labels are automatic (caption keywords or zero-shot); see the agreement "
                   "between methods before treating them as ground truth.")  # fmt: skip
    if lab.get("unlabelled"):
        out.append(f"{lab['unlabelled']} samples have no label; label-based relevance counts "
                   "them relevant to nothing.")  # fmt: skip
    sizes = (card["splits"] or {}).get("sizes") or {}
    if sizes.get("query") is not None and sizes["query"] < 100:
        out.append(f"The query set has {sizes['query']} samples: retrieval figures carry wide "
                   "confidence intervals (see the significance tests).")  # fmt: skip
    unknown = [s["name"] for s in card["sources"] if s["license"] == "unknown"]
    if unknown:
        out.append(f"No licence stated for source(s) {', '.join(unknown)}: set "
                   "datacard.licenses before redistributing.")  # fmt: skip
    if card["composition"].get("samples"):
        out.append("Near-duplicates were removed within the data set only, not against "
                   "other data sets a model may also see.")  # fmt: skip
    return out + list(p.limitations)


def _bibtex(p: DatacardParams, rel: Release) -> str:
    key = "".join(c for c in p.name if c.isalnum())[:24] or "dataset"
    year = rel.created[:4]
    authors = " and ".join(p.authors) or "{cmrops}"
    url = f",\n  url = {{{p.homepage}}}" if p.homepage else ""
    return (f"@misc{{{key}{year},\n  title = {{{p.name}}},\n  author = {authors},\n"
            f"  year = {{{year}}},\n  note = {{Release {rel.id}}}{url}\n}}")  # fmt: skip


# --------------------------------------------------------------------------- records


def for_release(project: str | os.PathLike[str], rel: Release, remote: str | None = None
                ) -> dict[str, Any]:  # fmt: skip
    """The release's attached card, or a freshly built one when it has none."""
    path = rel.attachment(JSON_NAME)
    if path is not None:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return build(project, rel, remote)


def attach_card(project: str | os.PathLike[str], release_id: str, remote: str | None = None
                ) -> dict[str, Any]:  # fmt: skip
    """Build release ``release_id``'s card and attach it (JSON and Markdown) to its record."""
    from cmrops import releases

    rel = releases.find(project, release_id, remote)
    card = build(project, rel, remote)
    releases.attach(project, rel.id, {
        JSON_NAME: (json.dumps(card, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode(),
        MD_NAME: markdown(card).encode("utf-8"),
    }, remote)  # fmt: skip
    return card


def card_sha256(card: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- markdown


def markdown(card: dict[str, Any], hf: dict[str, Any] | None = None) -> str:
    """The card as Markdown; with ``hf`` (``configs``: the splits' data files, ``media``) it
    starts with the Hugging Face YAML header (a dataset repository's README.md)."""
    from cmrops.datacard_md import render

    return render(card, hf)


def cli_main(args: Any) -> int:
    """``cmrops datacard [--release ID] [--project .] [--remote R] [--print]``."""
    card = attach_card(args.project, args.release, args.remote)
    rid = card["release"]["id"]
    if args.print:
        print(markdown(card))
    else:
        print(f"data card of release {rid}: {card['composition'].get('samples')} samples, "
              f"{card['quarantine']['total']} quarantined, {len(card['limitations'])} "
              f"limitations; attached to {Path(args.project) / '.cmrops/releases' / rid}"
              "/attached/datacard.{json,md}")  # fmt: skip
    return 0
