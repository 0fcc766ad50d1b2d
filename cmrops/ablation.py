"""What each cleaning rule is worth: the release's retrieval with the rule, against the same
pipeline with the rule switched off, on the same queries, with a paired significance test.

For a release and each cleaning rule that dropped samples in it (and for *no cleaning at
all*), :func:`run` re-runs, on the release's own outputs read from the DVC cache
(:class:`cmrops.release_data.ReleaseData`; the workspace is not touched):

1. **clean** with the rule's ``enabled`` switch off (everything else as the release's params
   say), so the samples the rule dropped - and only those, plus whatever a later rule then
   claims instead - come back;
2. **split** anchored on the release's assignments (``split.anchor``): every sample of the
   release keeps its set, and the samples that came back are placed by the split stage itself -
   stratified, as whole near-duplicate groups, so a sample linked to a query joins the query
   side - i.e. *the sets the split would have put them in*;
3. the **query set is held fixed**: the release's queries, each in every variant (so every row
   is paired over the same queries); a sample the anchored split puts on the query side is left
   out (it would be a new query), a release query the split would move stays a query. So the
   samples a rule dropped join the database and, as the split says, the training set;
4. **train** the fast closed-form methods (``ablation.methods``, default itq and cca) at
   ``ablation.bits`` on that split, and **evaluate** them as the release's evaluate params say.

The baseline is the release's own clean and split output, retrained the same way. Per rule,
model and direction the report gives ``delta`` = (with the rule) - (rule off) of the mAP and of
R@K - positive: the rule helps retrieval - with the paired randomisation p-value, a bootstrap
CI and a Holm adjustment over the rows of the table (:mod:`cmrops.significance`), and the
number of samples the rule dropped, came back, and where they went. A rule that did not run,
was off, or dropped nothing in the release is listed with why, not re-run (switching it off
changes nothing). The report is attached to the release (``ablation.json``) and its data card.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cmrops import io
from cmrops import significance as sig

log = logging.getLogger(__name__)

__all__ = ["RULES", "AblationParams", "run"]

#: The rules with an ``enabled`` switch, in clean's order (near_duplicate_image_caption is a
#: mode of near_duplicate_image; near_duplicate_caption only reports).
RULES = ("min_side", "max_aspect", "caption_length", "caption_language", "mismatch",
         "label_disagreement", "irrelevant", "exact_duplicate", "near_duplicate_image")  # fmt: skip
NO_CLEANING = "no_cleaning"
INPUTS = ["data/interim", "data/align", "data/labelled", "data/clean", "data/split"]
NAME = "ablation.json"


@dataclass(frozen=True)
class AblationParams:
    """The ``ablation:`` section of params.yaml."""

    methods: list[str] = field(default_factory=lambda: ["itq", "cca"])  # closed-form: seconds
    bits: list[int] = field(default_factory=lambda: [32])
    rules: list[str] = field(default_factory=list)  # empty: every rule that dropped samples
    no_cleaning: bool = True  # also every rule off at once
    on_release: bool = False  # measure at every versioned run (the DAG's version task)

    def __post_init__(self) -> None:
        from cmrops.methods import info

        unknown = [r for r in self.rules if r not in RULES]
        if unknown:
            raise ValueError(f"rules: {unknown} are not cleaning rules ({', '.join(RULES)})")
        for m in self.methods:
            if info(m).kind != "closed_form":
                raise ValueError(
                    f"methods: {m} is not a closed-form method; the ablation retrains once per "
                    "rule, so it takes the fast ones (itq, cca, cmfh)"
                )
        if not self.methods or not self.bits:
            raise ValueError("methods and bits: at least one each")


def run(
    project: str | os.PathLike[str],
    release_id: str = "latest",
    params: AblationParams | None = None,
    remote: str | None = None,
    attach: bool = True,
) -> dict[str, Any]:
    """Measure every rule of release ``release_id`` (see the module docstring); returns the
    report (and attaches it to the release)."""
    from cmrops import releases
    from cmrops.params import load_section
    from cmrops.release_data import ReleaseData

    root = Path(project).resolve()
    rel = releases.find(root, release_id, remote)
    params = params or load_section(rel.file("params.yaml"), "ablation", AblationParams)
    data = ReleaseData(root, rel, remote)
    quality = data.read_json("metrics/quality.json") or {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmrops-ablation-") as tmp:
        work = Path(tmp)
        data.materialize(INPUTS, work / "release")
        stage = _Stages(rel.file("params.yaml"), work / "release", params)
        base = stage.variant("baseline", work / "baseline", None)
        rules: dict[str, Any] = {}
        for rule in params.rules or list(RULES):
            r = (quality.get("rules") or {}).get(rule) or {}
            dropped = int(r.get("dropped") or 0)
            if r.get("status") != "run" or not r.get("drops", True) or dropped == 0:
                why = r.get("why") or ("dropped no sample" if r.get("status") == "run"
                                       else f"status {r.get('status', 'unknown')}")  # fmt: skip
                rules[rule] = {"status": r.get("status", "unknown"), "dropped": dropped,
                               "ablated": False, "why": why}  # fmt: skip
                continue
            rules[rule] = {"status": "run", "dropped": dropped, "ablated": True,
                           **stage.compare(base, stage.variant(rule, work / rule, [rule]))}
        if params.no_cleaning:
            dropped = int(quality.get("quarantined") or 0)
            rules[NO_CLEANING] = {"status": "run", "dropped": dropped, "ablated": True,
                                  **stage.compare(base, stage.variant(
                                      NO_CLEANING, work / NO_CLEANING, list(RULES)))}  # fmt: skip
    _holm(rules, params)
    report = {
        "release": rel.id,
        "design": _design(params),
        "models": base.models,
        "directions": base.directions,
        "queries": base.queries,
        "baseline": base.scores,
        "rules": rules,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if attach:
        releases.attach(root, rel.id, {NAME: (json.dumps(report, indent=2, sort_keys=True)
                                              + "\n").encode()}, remote)  # fmt: skip
    return report


@dataclass
class _Run:
    name: str
    models: list[str]
    directions: list[str]
    queries: int
    per_query: dict[str, Any]  # model -> direction -> metric -> per-query array
    scores: dict[str, Any]  # model -> direction -> metric -> mean
    placed: dict[str, int]
    restored: int
    removed: int


class _Stages:
    """The release's stage params, and one variant's clean -> split -> train -> evaluate."""

    def __init__(self, params_file: Path, release: Path, params: AblationParams) -> None:
        from cmrops.params import load_section
        from cmrops.stages.clean import CleanParams
        from cmrops.stages.evaluate import EvaluateParams
        from cmrops.stages.split import SplitParams
        from cmrops.stages.train import TrainParams

        self.release, self.params = release, params
        self.clean = load_section(params_file, "clean", CleanParams)
        self.split = load_section(params_file, "split", SplitParams)
        train = load_section(params_file, "train", TrainParams)
        self.train = replace(train, methods=list(params.methods), bits=list(params.bits),
                             float_baseline=False, device="cpu")  # fmt: skip
        ev = load_section(params_file, "evaluate", EvaluateParams)
        self.evaluate = replace(ev, models=[], aligned_baseline=None, float_baseline=False,
                                database_order=False,
                                significance=replace(ev.significance, enabled=False))  # fmt: skip
        self.significance = ev.significance
        self.base_run: _Run | None = None  # the first variant trained: the baseline
        self.base_split = ""
        assignments = io.read_parquet(release / "data/split/assignments.parquet")
        self.base_ids = set(assignments["sample_id"].to_pylist())
        # the release's queries and their set name (query; a ratio split's test)
        self.query_split = {sid: s for sid, s in zip(assignments["sample_id"].to_pylist(),
                                                     assignments["split"].to_pylist(), strict=True)
                            if s in ("query", "test")}  # fmt: skip

    def variant(self, name: str, out: Path, off: list[str] | None) -> _Run:
        from cmrops.stages import clean, split

        rel = self.release
        if off is None:  # the release itself
            clean_dir, assignments = rel / "data/clean", rel / "data/split/assignments.parquet"
        else:
            p = self.clean
            for rule in off:
                p = replace(p, **{rule: replace(getattr(p, rule), enabled=False)})
            if name == NO_CLEANING:
                p = replace(p, near_duplicate_caption=replace(p.near_duplicate_caption,
                                                              enabled=False))  # fmt: skip
            clean_dir = out / "clean"
            clean.run(p, rel / "data/interim", rel / "data/labelled", clean_dir,
                      metrics_path=out / "quality.json", align_dir=rel / "data/align")  # fmt: skip
            anchored = replace(self.split, anchor=str(rel / "data/split/assignments.parquet"),
                               import_assignments=None, audit_max_listed=0)  # fmt: skip
            split.run(anchored, clean_dir, rel / "data/labelled", out / "split",
                      metrics_path=out / "split.json")  # fmt: skip
            assignments = out / "split/assignments.parquet"
        return self._train_and_evaluate(name, out, clean_dir, assignments)

    def _train_and_evaluate(self, name: str, out: Path, clean_dir: Path, assignments: Path
                            ) -> _Run:  # fmt: skip
        from cmrops.stages import evaluate, train

        rel = self.release
        split_dir = out / "split-fixed"
        kept, placed = self._fixed_queries(assignments, split_dir / "assignments.parquet")
        same = self.base_run is not None and io.sha256_file(
            split_dir / "assignments.parquet") == self.base_split  # fmt: skip
        if same:  # the rule's samples all went elsewhere: the baseline's run, exactly
            b = self.base_run
            assert b is not None
            return _Run(name, b.models, b.directions, b.queries, b.per_query, b.scores, placed,
                        restored=0, removed=0)  # fmt: skip
        # train reads sample_id -> feature_row; a release query a variant's clean dropped keeps
        # its row from the release (the query set is fixed)
        rows = {**_feature_rows(rel / "data/clean"), **_feature_rows(clean_dir)}
        ordered = sorted(kept)
        io.write_parquet(out / "clean-ids/samples.parquet", pa.table(
            {"sample_id": ordered, "feature_row": [rows[s] for s in ordered]}))  # fmt: skip
        train.run(self.train, split_dir, out / "clean-ids", rel / "data/interim",
                  rel / "data/labelled", out / "models", out / "codes",
                  metrics_path=out / "train.json", progress=False)  # fmt: skip
        per_query: dict[str, Any] = {}
        metrics = evaluate.run(self.evaluate, out / "codes", rel / "data/labelled", split_dir,
                               out / "retrieval.json", out / "plots",
                               train_metrics=out / "train.json", per_query=per_query)  # fmt: skip
        scores = {m: {d: {k: round(float(np.mean(v)), 6) for k, v in vals.items()}
                      for d, vals in dirs.items()} for m, dirs in per_query.items()}  # fmt: skip
        shutil.rmtree(out / "models", ignore_errors=True)
        run = _Run(name, sorted(metrics["models"]), list(metrics["directions"]),
                   len(self.query_split), per_query, scores, placed,
                   restored=len(kept - self.base_ids),
                   removed=len(self.base_ids - kept))  # fmt: skip
        if self.base_run is None:
            self.base_run, self.base_split = run, io.sha256_file(split_dir / "assignments.parquet")
        return run

    def _fixed_queries(self, src: Path, dst: Path) -> tuple[set[str], dict[str, int]]:
        """The variant's assignments with the release's query set: every release query is a
        query (added back if the variant's clean dropped it, kept there if the anchored split
        moved it), any other sample the split put on the query side is left out."""
        t = io.read_parquet(src)
        cols = {c: t[c].to_pylist() for c in ("sample_id", "split", "in_train", "group_id",
                                               "protocol", "seed")}  # fmt: skip
        protocol, seed = cols["protocol"][0], cols["seed"][0]
        placed = {"database": 0, "train": 0, "left_out_as_query": 0}
        rows: dict[str, tuple[str, bool, str]] = {}
        for sid, s, tr, g in zip(cols["sample_id"], cols["split"], cols["in_train"],
                                 cols["group_id"], strict=True):  # fmt: skip
            if sid in self.query_split:
                rows[sid] = (self.query_split[sid], False, g or sid)
            elif s in ("query", "test"):
                placed["left_out_as_query"] += sid not in self.base_ids
            else:
                rows[sid] = (s, bool(tr), g or sid)
                if sid not in self.base_ids:
                    placed["train" if tr else "database"] += 1
        for sid, s in self.query_split.items():
            rows.setdefault(sid, (s, False, sid))
        ids = sorted(rows)
        table = pa.table(
            {"sample_id": ids, "split": [rows[i][0] for i in ids],
             "in_train": [rows[i][1] for i in ids], "group_id": [rows[i][2] for i in ids],
             "protocol": [protocol] * len(ids), "seed": [seed] * len(ids)},
            schema=t.schema,
        )  # fmt: skip
        io.write_parquet(dst, table)
        return set(ids), placed

    def compare(self, base: _Run, v: _Run) -> dict[str, Any]:
        """delta = baseline (rule on) - variant (rule off), paired over the queries."""
        out: dict[str, Any] = {"restored": v.restored, "removed": v.removed,
                               "placed": v.placed, "scores": v.scores, "delta": {}}  # fmt: skip
        p = self.significance
        for model in base.models:
            out["delta"][model] = {}
            for d in base.directions:
                cell: dict[str, Any] = {}
                for metric, a in base.per_query[model][d].items():
                    b = v.per_query[model][d][metric]
                    r = sig.paired_test(b, a, p.resamples, p.seed, p.alpha)  # a - b
                    short = "map" if metric == "map" else "recall"
                    cell[short] = round(r.delta, 6)
                    cell[f"{short}_p"] = round(r.p_value, 6)
                    cell[f"{short}_ci"] = [round(r.ci_low, 6), round(r.ci_high, 6)]
                    if short == "recall":
                        cell["recall_metric"] = metric
                out["delta"][model][d] = cell
        return out


def _feature_rows(clean_dir: Path) -> dict[str, int]:
    t = io.read_parquet(clean_dir / "samples.parquet", columns=["sample_id", "feature_row"])
    return dict(zip(t["sample_id"].to_pylist(), t["feature_row"].fill_null(-1).to_pylist(),
                    strict=True))  # fmt: skip


def _holm(rules: dict[str, Any], params: AblationParams) -> None:
    """Holm-adjust the table's p-values per metric (every rule x model x direction row)."""
    for short in ("map", "recall"):
        cells = [c for r in rules.values() for dirs in (r.get("delta") or {}).values()
                 for c in dirs.values() if f"{short}_p" in c]  # fmt: skip
        adjusted = sig.holm([c[f"{short}_p"] for c in cells])
        for c, a in zip(cells, adjusted, strict=True):
            c[f"{short}_p_holm"] = round(float(a), 6)
            c[f"{short}_significant"] = bool(a < 0.05)


def _design(params: AblationParams) -> dict[str, Any]:
    return {
        "summary": (
            "Each rule switched off in turn (and all rules: no_cleaning), clean re-run on the "
            "release's inputs; the samples that come back are placed by the split stage "
            "anchored on the release's assignments (near-duplicate groups whole); the query "
            "set is the release's, fixed; itq/cca retrained and evaluated on each. delta = "
            "with the rule - without it (positive: the rule helps), paired over the queries."
        ),
        "methods": list(params.methods),
        "bits": list(params.bits),
        "query_set": "the release's query set, in every variant",
        "placement": "split anchored on the release's assignments; new queries left out",
        "test": sig.METHOD,
    }


def cli_main(args: Any) -> int:
    """``cmrops ablate [--release ID] [--project .] [--methods itq,cca] [--bits 32]``."""
    from cmrops import releases
    from cmrops.params import load_section

    rel = releases.find(args.project, args.release, args.remote)
    p = load_section(rel.file("params.yaml"), "ablation", AblationParams)
    if args.methods:
        p = replace(p, methods=[m.strip() for m in args.methods.split(",") if m.strip()])
    if args.bits:
        p = replace(p, bits=[int(b) for b in args.bits.split(",")])
    if args.rules:
        p = replace(p, rules=[r.strip() for r in args.rules.split(",") if r.strip()])
    report = run(args.project, rel.id, p, args.remote)
    print(table(report))
    if not args.no_card:
        from cmrops import datacard

        datacard.attach_card(args.project, rel.id, args.remote)
        print(f"(attached to release {rel.id}: ablation.json and its data card)")
    return 0


def table(report: dict[str, Any]) -> str:
    """The report as a text table (what the CLI prints)."""
    lines = [f"what each cleaning rule is worth - release {report['release']}, "
             f"{report['queries']} fixed queries; delta = with the rule - without it",
             f"{'rule off':<22}{'dropped':>8}{'back':>6}  {'model':<10}{'direction':<15}"
             f"{'dmAP':>9}{'p':>8}{'dR@K':>9}{'p':>8}"]  # fmt: skip
    for rule, r in report["rules"].items():
        if not r.get("ablated"):
            lines.append(f"{rule:<22}{r['dropped']:>8}{'-':>6}  not re-run: {r.get('why')}")
            continue
        for model, dirs in r["delta"].items():
            for d, c in dirs.items():
                lines.append(f"{rule:<22}{r['dropped']:>8}{r['restored']:>6}  {model:<10}{d:<15}"
                             f"{c['map']:>+9.4f}{c['map_p']:>8.3f}{c.get('recall', 0):>+9.4f}"
                             f"{c.get('recall_p', 1):>8.3f}")  # fmt: skip
    return "\n".join(lines)
