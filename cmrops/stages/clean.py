"""Clean stage: drop duplicates, broken pairs and off-topic samples, each decision on record.

``run(params, interim_dir, labelled_dir, out_dir, raw_dir=..., metrics_path=...)`` reads
``<interim>/samples.parquet`` (:data:`~cmrops.schema.INTERIM_SAMPLES`), ``<interim>/features/``,
``<align>/model`` (the align stage, ``align_dir=``), ``<labelled>/{labels,evidence}.parquet`` and
``vocabulary.json`` (the label stage) and, when there,
``<raw>/synthetic_truth.parquet``. It writes:

* ``<out>/samples.parquet`` - the kept interim rows, same columns, sorted by ``sample_id``;
* ``<out>/quarantine.parquet`` - :data:`~cmrops.schema.QUARANTINE`, ``stage="clean"``, one row
  per dropped sample: ``reason`` is the rule, ``evidence`` a JSON object with the rule's threshold
  and what was measured (the duplicate kept instead and the distances, the similarity, ...);
* ``<out>/groups.parquet`` - :data:`~cmrops.schema.CLEAN_GROUPS`, every sample of a duplicate
  group, kept or dropped;
* ``<out>/overrides.parquet`` - :data:`~cmrops.schema.CLEAN_OVERRIDES`, the quarantine verdicts
  (confirm / overrule, who, when, why) of the project's review answer log (``review_log``,
  default ``review/answers.jsonl``, :mod:`cmrops.cleaning.overrides`) and what became of each
  sample; ``<out>/review_log.json`` - how much of that log this run merged;
* ``metrics_path`` (``metrics/quality.json``) - counts by rule, kept / dropped, group sizes, the
  rules that did not run and why, and the precision / recall of every rule on the planted
  defects when a synthetic truth is there (:mod:`cmrops.cleaning.scoring`);
* ``<out>/throughput.json`` - what the pHash candidate search did this run (samples queried,
  cached pairs reused, index size, seconds): differs between a first run and an incremental one,
  so it is apart from the deterministic outputs.

The pHash candidates are cached in ``<out>/.dedup-cache/`` (not a DVC output, git-ignored): a
rerun with added samples queries only the new ones against an index of all samples and reuses
the cached pairs among the others (:mod:`cmrops.cleaning.candidates`), with the same result as a
search of all pairs. The searches run on the current engine (:mod:`cmrops.engine`).

**Rules** (:mod:`cmrops.cleaning.rules`: one module each, with its params, its measure, its
decision and its evidence), each ``enabled`` in params with its thresholds. A sample is
quarantined by the *first* rule of this order that flags it (every rule is still evaluated on
every sample, so the metrics count each rule's flags on its own): ``min_side``, ``max_aspect``,
``caption_length``, ``caption_language``, ``mismatch``, ``label_disagreement``, ``irrelevant``,
the user's rules of ``extra_rules`` (:mod:`cmrops.cleaning.rules.extra`), then the duplicate
resolution: ``exact_duplicate``, ``near_duplicate_image`` / ``near_duplicate_image_caption``.
``near_duplicate_caption`` is reported and never drops on its own. Duplicates are resolved last:
the representative of a group (largest ``width * height``, then smallest ``sample_id``) is chosen
among the members no earlier rule dropped (:mod:`cmrops.cleaning.rules.duplicates`).

**Overrules.** A sample whose quarantine by a rule a person overruled (the dashboard's Review
page) is exempt from that rule: kept, unless a later rule claims it.

Inputs = kept + quarantined (asserted). A run that would keep nothing is an error that names the
rules that dropped the samples. The same inputs give byte-identical outputs.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmrops import io
from cmrops.cleaning import inputs, outputs, overrides, scoring
from cmrops.cleaning.rules import FILTERS, RULE_ORDER, CleanData, ExtraRule, Outcome
from cmrops.cleaning.rules.caption_language import LanguageRule
from cmrops.cleaning.rules.caption_length import CaptionLengthRule
from cmrops.cleaning.rules.duplicates import REASONS as DUPLICATE_REASONS
from cmrops.cleaning.rules.duplicates import REPORTED, Duplicates
from cmrops.cleaning.rules.exact_duplicate import ExactDuplicateRule
from cmrops.cleaning.rules.extra import build as build_extra
from cmrops.cleaning.rules.irrelevant import IrrelevantRule
from cmrops.cleaning.rules.label_disagreement import LabelDisagreementRule
from cmrops.cleaning.rules.max_aspect import MaxAspectRule
from cmrops.cleaning.rules.min_side import MinSideRule
from cmrops.cleaning.rules.mismatch import MismatchRule
from cmrops.cleaning.rules.near_duplicate_caption import NearCaptionRule
from cmrops.cleaning.rules.near_duplicate_image import NearImageRule

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_DIR",
    "REPORTED",
    "RULE_ORDER",
    "STAGE",
    "CaptionLengthRule",
    "CleanParams",
    "ExactDuplicateRule",
    "ExtraRule",
    "IrrelevantRule",
    "LabelDisagreementRule",
    "LanguageRule",
    "MaxAspectRule",
    "MinSideRule",
    "MismatchRule",
    "NearCaptionRule",
    "NearImageRule",
    "cli_main",
    "run",
]

STAGE = outputs.STAGE
#: Under the output folder, not a DVC output (git-ignored): the near-duplicate candidate cache.
CACHE_DIR = ".dedup-cache"


@dataclass(frozen=True)
class CleanParams:
    """The ``clean:`` section of params.yaml: one entry per rule (:mod:`cmrops.cleaning.rules`),
    and ``extra_rules``, rules of your own (:mod:`cmrops.cleaning.rules.extra`)."""

    exact_duplicate: ExactDuplicateRule = field(default_factory=ExactDuplicateRule)
    near_duplicate_image: NearImageRule = field(default_factory=NearImageRule)
    near_duplicate_caption: NearCaptionRule = field(default_factory=NearCaptionRule)
    min_side: MinSideRule = field(default_factory=MinSideRule)
    max_aspect: MaxAspectRule = field(default_factory=MaxAspectRule)
    caption_length: CaptionLengthRule = field(default_factory=CaptionLengthRule)
    caption_language: LanguageRule = field(default_factory=LanguageRule)
    mismatch: MismatchRule = field(default_factory=MismatchRule)
    label_disagreement: LabelDisagreementRule = field(default_factory=LabelDisagreementRule)
    irrelevant: IrrelevantRule = field(default_factory=IrrelevantRule)
    extra_rules: tuple[ExtraRule, ...] = ()

    def __post_init__(self) -> None:
        taken = set(RULE_ORDER) | set(REPORTED)
        for extra in self.extra_rules:
            name = build_extra(extra).name
            if name in taken:
                raise ValueError(
                    f"extra_rules: rule {extra.rule!r} is named {name!r}, which another rule "
                    "already is (the names are the quarantine reasons: give it its own)"
                )
            taken.add(name)


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops clean --params P --interim I --labelled L --raw R --out O --metrics M``."""
    from cmrops import engine
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, CleanParams)
    settings = load_section(args.params, engine.SECTION, engine.EngineParams)
    with engine.session(settings):
        m = run(
            params,
            args.interim,
            args.labelled,
            args.out,
            raw_dir=args.raw,
            metrics_path=args.metrics,
            align_dir=args.align,
            review_log=args.review_log,
        )
    by = ", ".join(f"{k} {v}" for k, v in m["quarantined_by_reason"].items()) or "none"
    print(f"clean: {m['inputs']} in, {m['kept']} kept, {m['quarantined']} quarantined ({by})")
    for rule, why in m["not_run"].items():
        print(f"  {rule} not run: {why}")
    syn = m.get("synthetic")
    if syn:
        for rule, s in syn["rules"].items():
            if s["status"] == "run" and s["targets"]:
                print(f"  {rule}: precision {s['precision']} recall {s['recall']} (planted)")
    return 0


def run(
    params: CleanParams,
    interim_dir: str | os.PathLike[str],
    labelled_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    raw_dir: str | os.PathLike[str] | None = None,
    metrics_path: str | os.PathLike[str] | None = None,
    align_dir: str | os.PathLike[str] | None = None,
    review_log: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Clean ``interim_dir`` into ``out_dir`` (see module docstring); returns the metrics.

    ``labelled_dir`` may be None only when the label rules (``irrelevant``,
    ``label_disagreement``) are disabled. ``metrics_path`` defaults to ``<out>/quality.json``.
    ``align_dir`` is the align stage's output (:func:`cmrops.stages.align.load_output`).
    ``review_log``: the project's review answer log (:mod:`cmrops.answers`); its quarantine
    verdicts are applied when it is there (:mod:`cmrops.cleaning.overrides`)."""
    interim, out = Path(interim_dir), Path(out_dir)
    table, file_rows = inputs.load_interim(interim)
    n = table.num_rows
    if n == 0:
        raise ValueError(f"{interim / 'samples.parquet'}: no samples to clean")
    cols = inputs.columns(table)
    del table  # the kept rows are streamed from the file at the end
    meta, image_emb, text_emb = inputs.load_features(interim, cols["feature_row"])
    labels = inputs.load_labels(
        Path(labelled_dir) if labelled_dir else None,
        cols["sample_id"],
        need=params.irrelevant.enabled or params.label_disagreement.enabled,
        irrelevant=params.irrelevant.enabled,
    )
    verdicts = overrides.load(review_log, cols["sample_id"])
    exempt = verdicts.exempt(n)

    def load_alignment() -> Any:
        from cmrops.stages.align import load_output

        return load_output(align_dir, meta, with_scores=True)

    def load_null() -> Any:
        from cmrops.stages.align import load_null

        return load_null(align_dir)

    data = CleanData(
        cols, meta, image_emb, text_emb, labels, np.zeros(n, bool), load_alignment,
        cache_dir=out / CACHE_DIR, load_null=load_null,
    )  # fmt: skip
    rules: dict[str, Outcome] = {}
    reason_of: dict[int, str] = {}
    walk = [rule_type(getattr(params, rule_type.name)) for rule_type in FILTERS]
    walk += [build_extra(extra) for extra in params.extra_rules]
    for rule in walk:
        rules[rule.name] = rule.apply(data)
    for rule in walk:  # every rule measures every sample; the first to flag one claims it
        _claim(rules[rule.name], data.dropped, reason_of, exempt.get(rule.name))
    dup = Duplicates(
        params.exact_duplicate, params.near_duplicate_image, params.near_duplicate_caption
    ).apply(data)
    rules.update(dup.rules)
    order = [rule.name for rule in walk] + list(DUPLICATE_REASONS)
    for name in DUPLICATE_REASONS:
        _claim(rules[name], data.dropped, reason_of, exempt.get(name))
    dropped = data.dropped

    kept_idx = np.flatnonzero(~dropped)
    if len(kept_idx) == 0:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(reason_of.values()).items()))
        raise ValueError(
            f"cleaning would drop all {n} samples ({by}); loosen the thresholds or disable "
            "rules in the clean: section of params"
        )
    quarantine = outputs.quarantine_table(
        cols, rules, reason_of, order, verdicts.overruled_rules()
    )
    if n != len(kept_idx) + quarantine.num_rows:  # the stage contract: nothing leaves silently
        raise AssertionError(
            f"inputs {n} != kept {len(kept_idx)} + quarantined {quarantine.num_rows}"
        )
    groups = outputs.groups_table(cols, dup, dropped)

    metrics = outputs.metrics(n, len(kept_idx), reason_of, rules, dup, labels, order)
    metrics["review"] = overrides.metrics(verdicts, reason_of)
    truth = inputs.load_truth(Path(raw_dir) if raw_dir else None)
    if truth:
        flags = {name: r.flagged for name, r in rules.items() if r.flagged is not None}
        status = {name: r.status for name, r in rules.items()}
        metrics["synthetic"] = scoring.score(
            truth,
            cols["sample_id"],
            inputs.upstream(interim),
            flags,
            status,
            dup.drop.labels,
            dup.drop.rep,
            reason_of,
            scores={name: r.scores for name, r in rules.items() if r.scores is not None},
        )
    out.mkdir(parents=True, exist_ok=True)
    io.write_parquet(out / "quarantine.parquet", quarantine)
    io.write_parquet(out / "groups.parquet", groups)
    flagged = {name: r.flagged for name, r in rules.items()}
    io.write_parquet(
        out / "overrides.parquet", overrides.table(verdicts, cols["sample_id"], flagged, reason_of)
    )
    io.write_json(out / "review_log.json", overrides.merged(verdicts))
    outputs.write_kept(interim / "samples.parquet", out / "samples.parquet", file_rows[kept_idx])
    io.write_json(Path(metrics_path) if metrics_path else out / "quality.json", metrics)
    io.write_json(out / "throughput.json", {"near_image_search": dup.search})
    return metrics


def _claim(
    rule: Outcome, dropped: np.ndarray, reason_of: dict[int, str], exempt: np.ndarray | None
) -> None:
    """Quarantine the rows ``rule`` flags that no earlier rule claimed, except those whose
    quarantine by this rule a person overruled (``exempt``)."""
    if rule.status != "run" or not rule.drops or rule.flagged is None:
        return
    flags = rule.flagged if exempt is None else rule.flagged & ~exempt
    for i in np.flatnonzero(flags & ~dropped):
        reason_of[int(i)] = rule.name
    dropped |= flags
