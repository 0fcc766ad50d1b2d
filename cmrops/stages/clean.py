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

**Rules**, each ``enabled`` in params with its thresholds; a sample is quarantined with the
*first* rule of this order that flags it (every rule is still evaluated on every sample, so the
metrics count each rule's flags on its own):

* ``min_side`` - width or height below ``pixels``;
* ``max_aspect`` - long side / short side above ``ratio``;
* ``caption_length`` - no caption with ``min_tokens <= tokens <= max_tokens`` (preprocess's
  token counts);
* ``caption_language`` - no caption in an ``allowed`` language; needs ``detector``
  (``"module:function"``, text -> language code); without one the rule is *not run*;
* ``mismatch`` - the cosine of the image and its caption in the align stage's shared space
  (``<align>/model``, :mod:`cmrops.stages.align`: the concept bridge fused with learned heads,
  learned heads, or the identity for an aligned dual encoder) below ``min_similarity``. ``auto``
  (default) reads the cut from these pairs' scores against the align stage's null (the same
  images with other samples' captions, ``null_scores.parquet``): a mixture fit and a gap test
  (:mod:`cmrops.cleaning.mismatch`) flag the pairs likelier mismatched than correct, and none
  when the scores show no null-like component - so clean data loses no pair to a fixed flag
  rate; the fit is under ``report.calibration``. A number is a cosine in that space. Without an
  alignment (``align`` not run, or no embeddings) it is *not run*, with the reason;
* ``label_disagreement`` - the labels two methods of the label stage passed (default: the
  source's ``provided`` labels and the caption ``keyword`` labels, from ``evidence.parquet``),
  both non-empty, share at most ``max_overlap`` of the smaller set (the overlap coefficient
  ``|A & B| / min(|A|, |B|)``: 0 = disjoint). Captions name a few of an image's objects, so a
  caption set inside the provided set is agreement (overlap 1), which a Jaccard index would
  punish. A cheap, explainable signal of a caption swapped onto another image; drops only with
  ``drop: true``. The default 0.34 (a third or less shared) flags none of the 151 comparable
  COCO sample photos and has precision 1.0 on the synthetic set (0.5 would flag 8 COCO photos);
* ``irrelevant`` - no effective label from the vocabulary after labelling; reported, not
  dropped, when the label stage induced the vocabulary from the captions (its words are the
  commonest ones; a sample without them is rarer, not off-topic);
* ``exact_duplicate`` - same image bytes as the kept representative of its group;
* ``near_duplicate_image`` - pHash within ``radius`` of a kept sample, confirmed by dHash within
  ``dhash_radius`` and image-embedding cosine >= ``min_image_cosine`` when set
  (``drop: always``);
* ``near_duplicate_image_caption`` - the same, and the caption SimHash within
  ``near_duplicate_caption.radius`` too (``drop: with_caption``: an image near-duplicate with
  different captions is then reported, not dropped).

``near_duplicate_caption`` (SimHash within ``radius``) is reported - groups, pairs, pairs whose
images differ - and never drops on its own. Duplicates are resolved last: the representative of a
group (largest ``width * height``, then smallest ``sample_id``) is chosen among the members no
earlier rule dropped (:mod:`cmrops.cleaning.dedup`).

**Overrules.** A sample whose quarantine by a rule a person overruled (the dashboard's Review
page) is exempt from that rule: kept, unless a later rule claims it.

Inputs = kept + quarantined (asserted). A run that would keep nothing is an error that names the
rules that dropped the samples. The same inputs give byte-identical outputs.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmrops import io
from cmrops.cleaning import candidates, dedup, overrides, scoring
from cmrops.cleaning.graph import (
    collapse_identical,
    components,
    hamming,
    pairs_within,
    size_histogram,
)
from cmrops.schema import CLEAN_GROUPS, INTERIM_SAMPLES, QUARANTINE

log = logging.getLogger(__name__)

STAGE = "clean"
#: The order in which rules claim a sample (the first that flags it is its quarantine reason).
RULE_ORDER = (
    "min_side",
    "max_aspect",
    "caption_length",
    "caption_language",
    "mismatch",
    "label_disagreement",
    "irrelevant",
    "exact_duplicate",
    "near_duplicate_image",
    "near_duplicate_image_caption",
)
REPORTED = ("near_duplicate_caption",)  # evaluated and reported, never a quarantine reason
#: Under the output folder, not a DVC output (git-ignored): the near-duplicate candidate cache.
CACHE_DIR = ".dedup-cache"
_EXAMPLES = 20  # example pairs listed per reported rule in the metrics


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class ExactDuplicateRule:
    enabled: bool = True


@dataclass(frozen=True)
class NearImageRule:
    enabled: bool = True
    radius: int = 6  # pHash Hamming radius, inclusive
    dhash_radius: int | None = 10  # confirm a pHash candidate by dHash within this (null: no)
    min_image_cosine: float | None = 0.85  # and by image-embedding cosine (null: no; skipped
    # with a note when preprocess wrote no embeddings)
    drop: Literal["always", "with_caption"] = "always"

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 64:
            raise ValueError(f"radius must be in [0, 64], got {self.radius}")
        if self.dhash_radius is not None and not 0 <= self.dhash_radius <= 64:
            raise ValueError(f"dhash_radius must be in [0, 64] or null, got {self.dhash_radius}")
        if self.min_image_cosine is not None and not -1.0 <= self.min_image_cosine <= 1.0:
            raise ValueError(f"min_image_cosine must be in [-1, 1], got {self.min_image_cosine}")


@dataclass(frozen=True)
class NearCaptionRule:
    enabled: bool = True
    radius: int = 3  # caption SimHash Hamming radius, inclusive

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 64:
            raise ValueError(f"radius must be in [0, 64], got {self.radius}")


@dataclass(frozen=True)
class MinSideRule:
    enabled: bool = True
    pixels: int = 32

    def __post_init__(self) -> None:
        if self.pixels < 1:
            raise ValueError(f"pixels must be >= 1, got {self.pixels}")


@dataclass(frozen=True)
class MaxAspectRule:
    enabled: bool = True
    ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.ratio < 1.0:
            raise ValueError(f"ratio must be >= 1, got {self.ratio}")


@dataclass(frozen=True)
class CaptionLengthRule:
    enabled: bool = True
    min_tokens: int = 3
    max_tokens: int | None = 256  # null: no upper bound

    def __post_init__(self) -> None:
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must be >= min_tokens (or null)")


@dataclass(frozen=True)
class LanguageRule:
    enabled: bool = True
    detector: str | None = None  # "module:function", text -> language code; null: not run
    allowed: tuple[str, ...] = ("en",)

    def __post_init__(self) -> None:
        if self.detector is not None and ":" not in self.detector:
            raise ValueError(f"detector must be 'module:function', got {self.detector!r}")
        if not self.allowed:
            raise ValueError("allowed: list at least one language code")


@dataclass(frozen=True)
class MismatchRule:
    enabled: bool = True
    # cosine in the align stage's space; auto: the threshold the align stage calibrated
    min_similarity: float | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        if self.min_similarity != "auto" and not -1.0 <= self.min_similarity <= 1.0:
            raise ValueError(
                f"min_similarity must be 'auto' or in [-1, 1], got {self.min_similarity!r}"
            )


@dataclass(frozen=True)
class LabelDisagreementRule:
    enabled: bool = True
    drop: bool = True  # false: flagged and reported only
    methods: tuple[str, str] = ("provided", "keyword")  # label-stage methods compared
    # flagged when |A & B| / min(|A|, |B|) <= this (0: disjoint; 0.34: a third or less shared)
    max_overlap: float = 0.34

    def __post_init__(self) -> None:
        if len(self.methods) != 2 or self.methods[0] == self.methods[1]:
            raise ValueError(f"methods: name two different methods, got {list(self.methods)}")
        if not 0.0 <= self.max_overlap < 1.0:
            raise ValueError(f"max_overlap must be in [0, 1), got {self.max_overlap}")


@dataclass(frozen=True)
class IrrelevantRule:
    enabled: bool = True


@dataclass(frozen=True)
class CleanParams:
    """The ``clean:`` section of params.yaml: one entry per rule."""

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


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops clean --params P --interim I --labelled L --raw R --out O --metrics M``."""
    from cmrops import engine
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, CleanParams)
    with engine.session(engine.load_params(args.params)):
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


@dataclass
class _Rule:
    """One rule's outcome: status, flags and per-flag evidence."""

    name: str
    status: Literal["run", "not_run", "off"]
    drops: bool
    threshold: dict[str, Any]
    why: str | None = None
    flagged: np.ndarray | None = None  # bool mask over rows
    evidence: dict[int, dict[str, Any]] = field(default_factory=dict)
    detail: dict[int, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    scores: np.ndarray | None = None  # per row, higher = more plausible (NaN: not measured)


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
    table, file_rows = _load_interim(interim)
    n = table.num_rows
    if n == 0:
        raise ValueError(f"{interim / 'samples.parquet'}: no samples to clean")
    cols = _columns(table)
    del table  # the kept rows are streamed from the file at the end
    meta, image_emb, text_emb = _load_features(interim, cols["feature_row"])
    labels = _load_labels(Path(labelled_dir) if labelled_dir else None, params, cols["sample_id"])
    verdicts = overrides.load(review_log, cols["sample_id"])
    exempt = verdicts.exempt(n)

    rules: dict[str, _Rule] = {}
    rules["min_side"] = _min_side(params.min_side, cols)
    rules["max_aspect"] = _max_aspect(params.max_aspect, cols)
    rules["caption_length"] = _caption_length(params.caption_length, cols)
    rules["caption_language"] = _caption_language(params.caption_language, cols)
    rules["mismatch"] = _mismatch(
        params.mismatch, align_dir, meta, image_emb, text_emb, cols["sample_id"]
    )
    rules["label_disagreement"] = _label_disagreement(params.label_disagreement, labels, n)
    rules["irrelevant"] = _irrelevant(params.irrelevant, labels, cols)

    dropped = np.zeros(n, bool)
    reason_of: dict[int, str] = {}
    for name in RULE_ORDER[:7]:
        _claim(rules[name], dropped, reason_of, exempt.get(name))
    dup = _duplicates(params, cols, image_emb, ~dropped, out / CACHE_DIR)
    rules.update(dup.rules)
    for name in RULE_ORDER[7:]:
        _claim(rules[name], dropped, reason_of, exempt.get(name))

    kept_idx = np.flatnonzero(~dropped)
    if len(kept_idx) == 0:
        by = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(reason_of.values()).items()))
        raise ValueError(
            f"cleaning would drop all {n} samples ({by}); loosen the thresholds or disable "
            "rules in the clean: section of params"
        )
    quarantine = _quarantine_table(cols, rules, reason_of, verdicts.overruled_rules())
    if n != len(kept_idx) + quarantine.num_rows:  # the stage contract: nothing leaves silently
        raise AssertionError(
            f"inputs {n} != kept {len(kept_idx)} + quarantined {quarantine.num_rows}"
        )
    groups = _groups_table(cols, dup, dropped)

    metrics = _metrics(n, len(kept_idx), reason_of, rules, dup, labels)
    metrics["review"] = overrides.metrics(verdicts, reason_of)
    truth = _load_truth(Path(raw_dir) if raw_dir else None)
    if truth:
        flags = {name: r.flagged for name, r in rules.items() if r.flagged is not None}
        status = {name: r.status for name, r in rules.items()}
        metrics["synthetic"] = scoring.score(
            truth,
            cols["sample_id"],
            _upstream(interim),
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
    _write_kept(interim / "samples.parquet", out / "samples.parquet", file_rows[kept_idx])
    io.write_json(Path(metrics_path) if metrics_path else out / "quality.json", metrics)
    io.write_json(out / "throughput.json", {"near_image_search": dup.search})
    return metrics


def _claim(
    rule: _Rule, dropped: np.ndarray, reason_of: dict[int, str], exempt: np.ndarray | None
) -> None:
    """Quarantine the rows ``rule`` flags that no earlier rule claimed, except those whose
    quarantine by this rule a person overruled (``exempt``)."""
    if rule.status != "run" or not rule.drops or rule.flagged is None:
        return
    flags = rule.flagged if exempt is None else rule.flagged & ~exempt
    for i in np.flatnonzero(flags & ~dropped):
        reason_of[int(i)] = rule.name
    dropped |= flags


# --------------------------------------------------------------------------- inputs


#: The interim columns the rules read (:func:`_columns`); the others are only copied to the output.
_RULE_COLUMNS = (
    "sample_id", "source", "source_key", "image_sha256", "labels", "width", "height", "phash",
    "dhash", "caption_simhash", "captions_norm", "token_counts", "feature_row", "media",
)  # fmt: skip


def _load_interim(interim: Path) -> tuple[pa.Table, np.ndarray]:
    """The rule columns of the interim samples sorted by sample_id, and the file row of each."""
    path = interim / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found - run `cmrops preprocess` first (or pass --interim)"
        )
    names = pq.read_schema(path).names
    missing = [c for c in INTERIM_SAMPLES.names if c not in names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the INTERIM_SAMPLES "
            "contract of cmrops/schema.py (re-run `cmrops preprocess`)"
        )
    table = io.read_parquet(path, columns=list(_RULE_COLUMNS))
    table = table.cast(pa.schema([INTERIM_SAMPLES.field(c) for c in _RULE_COLUMNS]))
    if table["sample_id"].null_count:
        raise ValueError(f"{path}: sample_id holds nulls; re-run `cmrops preprocess`")
    order = pc.sort_indices(table, [("sample_id", "ascending")])
    table = table.take(order)
    ids = table["sample_id"].to_pylist()
    dup = sorted({a for a, b in itertools.pairwise(ids) if a == b})
    if dup:
        raise ValueError(f"{path}: sample_id repeated: {', '.join(dup[:5])}")
    return table, np.asarray(order.to_numpy(), dtype=np.int64)


def _write_kept(src: Path, dst: Path, file_rows: np.ndarray) -> None:
    """Copy rows ``file_rows`` (file positions, in sample_id order) of ``src`` to ``dst``, every
    INTERIM_SAMPLES column. Preprocess writes its table sorted, so the rows usually ascend and
    are streamed batch by batch; otherwise the table is read whole and reordered."""
    with io.parquet_writer(dst, INTERIM_SAMPLES) as writer:
        if len(file_rows) > 1 and (np.diff(file_rows) < 0).any():
            table = io.read_parquet(src, columns=INTERIM_SAMPLES.names)
            writer.write(table.take(pa.array(file_rows)))
            return
        start = 0
        for batch in io.iter_parquet(src, columns=INTERIM_SAMPLES.names):
            end = start + batch.num_rows
            lo, hi = np.searchsorted(file_rows, [start, end])
            if hi > lo:
                writer.write(batch.take(pa.array(file_rows[lo:hi] - start)))
            start = end


class _Columns(dict[str, Any]):
    """The rule columns: numpy arrays for numbers, Python lists for text, each list made from
    the Arrow table the first time a rule asks for it (``captions`` only with a language
    detector, ``provided`` / ``source`` / ``source_key`` for evidence and quarantine rows)."""

    _LISTS: Mapping[str, tuple[str, bool]] = {  # key -> (column, None as [])
        "source": ("source", False),
        "source_key": ("source_key", False),
        "sha256": ("image_sha256", False),
        "provided": ("labels", True),
        "captions": ("captions_norm", True),
        "tokens": ("token_counts", True),
    }

    def __init__(self, table: pa.Table, eager: Mapping[str, Any]) -> None:
        super().__init__(eager)
        self._table = table

    def __missing__(self, key: str) -> list[Any]:
        if key not in self._LISTS:
            raise KeyError(key)
        column, as_list = self._LISTS[key]
        values = self._table[column].to_pylist()
        self[key] = values = [list(x or []) for x in values] if as_list else values
        return values


def _columns(table: pa.Table) -> dict[str, Any]:
    def u64(name: str) -> np.ndarray:
        return table[name].fill_null(0).to_numpy().astype(np.uint64)

    def i64(name: str, fill: int) -> np.ndarray:
        return table[name].fill_null(fill).to_numpy().astype(np.int64)

    return _Columns(
        table,
        {
            "sample_id": table["sample_id"].to_pylist(),
            "width": i64("width", 0),
            "height": i64("height", 0),
            "phash": u64("phash"),
            "dhash": u64("dhash"),
            "simhash": u64("caption_simhash"),
            "feature_row": i64("feature_row", -1),
            "audio": pc.equal(table["media"].fill_null("image"), "audio")
            .to_numpy(zero_copy_only=False)
            .astype(bool),
        },
    )


def _load_features(
    interim: Path, feature_row: np.ndarray
) -> tuple[dict[str, Any] | None, np.ndarray | None, np.ndarray | None]:
    """meta.json and the image / text embeddings re-ordered to the rows (NaN rows when a sample
    has no feature row)."""
    meta_path = interim / "features" / "meta.json"
    if not meta_path.is_file():
        return None, None, None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if not meta.get("embeddings"):
        return meta, None, None
    arrays = []
    for kind in ("image", "text"):
        path = interim / "features" / f"{kind}.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: named by features/meta.json but missing")
        arr = io.read_npy(path, mmap_mode="r")
        bad = (feature_row >= len(arr)).sum()
        if bad:
            raise ValueError(f"{path}: {bad} sample(s) point past its {len(arr)} rows")
        rows = np.full((len(feature_row), arr.shape[1]), np.nan, np.float32)
        ok = feature_row >= 0
        rows[ok] = arr[feature_row[ok]]
        arrays.append(rows)
    return meta, arrays[0], arrays[1]


@dataclass
class _Labels:
    """What the label stage decided, per row."""

    available: bool
    why: str | None = None
    vocabulary: frozenset[str] = frozenset()
    # Per row; rows with the same labels share one frozenset (a handful of distinct sets).
    effective: list[frozenset[str]] = field(default_factory=list)  # labels.parquet, vocabulary
    by_method: dict[str, list[frozenset[str]]] = field(default_factory=dict)  # evidence, passed
    methods_present: frozenset[str] = frozenset()
    outside_vocabulary: dict[str, int] = field(default_factory=dict)
    stale_rows: int = 0  # label rows of samples not in the interim table
    induced: bool = False  # the label stage induced the vocabulary from the captions


def _load_labels(labelled: Path | None, params: CleanParams, ids: list[str]) -> _Labels:
    need = params.irrelevant.enabled or params.label_disagreement.enabled
    if labelled is None:
        if need:
            raise ValueError(
                "the irrelevant / label_disagreement rules need the label stage's output: pass "
                "--labelled (run `cmrops label` first) or disable both rules"
            )
        return _Labels(False, "no --labelled folder given")
    lpath, vpath = labelled / "labels.parquet", labelled / "vocabulary.json"
    for p in (lpath, vpath):
        if not p.is_file():
            if need:
                raise FileNotFoundError(
                    f"{p}: not found - run `cmrops label` first, or disable the irrelevant and "
                    "label_disagreement rules in the clean: section of params"
                )
            return _Labels(False, f"{p} not found")
    vocab = _vocabulary(vpath)
    if not vocab and params.irrelevant.enabled:
        raise ValueError(f"{vpath}: the vocabulary is empty - every sample would be irrelevant")
    ids_arr = pa.array(ids, pa.string())
    table = io.read_parquet(lpath)
    for c in ("sample_id", "label"):
        if c not in table.column_names:
            raise ValueError(f"{lpath}: missing column {c!r} (expected the LABELS contract)")
    outside: Counter[str] = Counter()
    rows = _rows_of(table["sample_id"], ids_arr)
    stale = int((rows < 0).sum())
    labels = table["label"].to_pylist()
    known = np.flatnonzero(rows >= 0).tolist()
    for i in known:
        if labels[i] not in vocab:
            outside[str(labels[i])] += 1
    effective = _row_sets(len(ids), rows, labels, [i for i in known if labels[i] in vocab])
    by_method: dict[str, list[frozenset[str]]] = {}
    present: set[str] = set()
    epath = labelled / "evidence.parquet"
    need = ["sample_id", "label", "method", "passed"]
    if epath.is_file() and set(need) <= set(pq.read_schema(epath).names):
        ev = io.read_parquet(epath, columns=need)
        ev_rows = _rows_of(ev["sample_id"], ids_arr)
        passed = ev["passed"].fill_null(False).to_numpy(zero_copy_only=False)
        methods = ev["method"].to_pylist()
        ev_labels = ev["label"].to_pylist()
        present.update(methods)
        keep = np.flatnonzero(passed & (ev_rows >= 0)).tolist()
        per_method: dict[str, list[int]] = {}
        for j in keep:
            if ev_labels[j] in vocab:
                per_method.setdefault(methods[j], []).append(j)
        for method, picked in per_method.items():
            by_method[method] = _row_sets(len(ids), ev_rows, ev_labels, picked)
    return _Labels(
        True,
        vocabulary=frozenset(vocab),
        effective=effective,
        by_method=by_method,
        methods_present=frozenset(present),
        outside_vocabulary=dict(sorted(outside.items())),
        stale_rows=stale,
        induced=_induced(vpath),
    )


def _induced(vpath: Path) -> bool:
    try:
        v = json.loads(vpath.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return bool(isinstance(v, dict) and v.get("induced"))


def _row_sets(
    n: int, rows: np.ndarray, labels: list[Any], picked: list[int]
) -> list[frozenset[str]]:
    """For each of ``n`` rows, the set of ``labels[j]`` over the ``picked`` j with
    ``rows[j]`` = that row. Equal sets are one shared object: memory per row is a pointer."""
    per: dict[int, set[str]] = {}
    row_list = rows.tolist()
    for j in picked:
        per.setdefault(row_list[j], set()).add(labels[j])
    empty: frozenset[str] = frozenset()
    shared: dict[frozenset[str], frozenset[str]] = {empty: empty}
    out = [empty] * n
    for i, got in per.items():
        key = frozenset(got)
        out[i] = shared.setdefault(key, key)
    return out


def _rows_of(sample_ids: pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """The row of each of ``sample_ids`` in ``ids`` (int64, -1 where it is not there)."""
    rows = pc.index_in(sample_ids, value_set=ids).fill_null(-1)
    return np.asarray(rows.to_numpy(), dtype=np.int64)


def _vocabulary(path: Path) -> set[str]:
    """Labels of ``vocabulary.json``: ``{"labels": [...]}`` (the label stage), a plain list, or
    a mapping label -> terms."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    labels = data.get("labels", data) if isinstance(data, dict) else data
    if isinstance(labels, dict):
        labels = list(labels)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path}: expected {{'labels': [label, ...]}}")
    return set(labels)


def _load_truth(raw: Path | None) -> list[dict[str, Any]]:
    if raw is None:
        return []
    path = raw / "synthetic_truth.parquet"
    if not path.is_file():
        return []
    return io.read_parquet(path).to_pylist()


def _upstream(interim: Path) -> dict[str, str]:
    path = interim / "quarantine.parquet"
    if not path.is_file():
        return {}
    t = io.read_parquet(path)
    return {
        sid: reason
        for sid, reason in zip(t["sample_id"].to_pylist(), t["reason"].to_pylist(), strict=True)
        if sid is not None
    }


# --------------------------------------------------------------------------- per-sample rules


def _off(name: str, threshold: dict[str, Any], drops: bool = True) -> _Rule:
    return _Rule(name, "off", drops, threshold, why="disabled in params")


def _min_side(p: MinSideRule, c: dict[str, Any]) -> _Rule:
    thr = {"min_side": p.pixels}
    if not p.enabled:
        return _off("min_side", thr)
    if c["audio"].all() and len(c["audio"]):
        return _Rule("min_side", "not_run", True, thr, why="audio clips have no frame size")
    w, h = c["width"], c["height"]
    flagged = (np.minimum(w, h) < p.pixels) & ~c["audio"]
    r = _Rule("min_side", "run", True, thr, flagged=flagged)
    for i in np.flatnonzero(flagged):
        r.evidence[int(i)] = {"width": int(w[i]), "height": int(h[i])}
        r.detail[int(i)] = f"frame {w[i]}x{h[i]}: a side below min_side={p.pixels}"
    return r


def _max_aspect(p: MaxAspectRule, c: dict[str, Any]) -> _Rule:
    thr = {"max_aspect": p.ratio}
    if not p.enabled:
        return _off("max_aspect", thr)
    if c["audio"].all() and len(c["audio"]):
        return _Rule("max_aspect", "not_run", True, thr, why="audio clips have no frame size")
    w, h = c["width"].astype(np.float64), c["height"].astype(np.float64)
    aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1.0)
    flagged = (aspect > p.ratio) & ~c["audio"]
    r = _Rule("max_aspect", "run", True, thr, flagged=flagged)
    for i in np.flatnonzero(flagged):
        r.evidence[int(i)] = {"aspect": round(float(aspect[i]), 4)}
        r.detail[int(i)] = f"aspect ratio {aspect[i]:.2f} above max_aspect={p.ratio}"
    return r


def _caption_length(p: CaptionLengthRule, c: dict[str, Any]) -> _Rule:
    thr = {"min_tokens": p.min_tokens, "max_tokens": p.max_tokens}
    if not p.enabled:
        return _off("caption_length", thr)
    hi = p.max_tokens if p.max_tokens is not None else np.iinfo(np.int64).max
    n = len(c["tokens"])
    flagged = np.zeros(n, bool)
    out_of_range = 0
    r = _Rule("caption_length", "run", True, thr)
    for i, counts in enumerate(c["tokens"]):
        ok = [p.min_tokens <= t <= hi for t in counts]
        out_of_range += len(ok) - sum(ok)
        if not any(ok):
            flagged[i] = True
            r.evidence[i] = {"token_counts": list(counts)}
            r.detail[i] = (
                f"no caption of {p.min_tokens}..{p.max_tokens} tokens (counts {list(counts)})"
            )
    r.flagged = flagged
    r.report = {"captions_out_of_range": out_of_range}
    return r


def _caption_language(p: LanguageRule, c: dict[str, Any]) -> _Rule:
    thr = {"detector": p.detector, "allowed": list(p.allowed)}
    if not p.enabled:
        return _off("caption_language", thr)
    if p.detector is None:
        return _Rule(
            "caption_language", "not_run", True, thr,
            why="no language detector configured (set clean.caption_language.detector to "
            "'module:function', a function text -> language code)",
        )  # fmt: skip
    detect = _import_detector(p.detector)
    allowed = set(p.allowed)
    n = len(c["captions"])
    flagged = np.zeros(n, bool)
    r = _Rule("caption_language", "run", True, thr)
    seen: Counter[str] = Counter()
    for i, caps in enumerate(c["captions"]):
        langs = [str(detect(t)) for t in caps]
        seen.update(langs)
        if not any(lang in allowed for lang in langs):
            flagged[i] = True
            r.evidence[i] = {"languages": langs}
            r.detail[i] = f"no caption in {sorted(allowed)} (detected {langs})"
    r.flagged = flagged
    r.report = {"caption_languages": dict(sorted(seen.items()))}
    return r


def _import_detector(spec: str) -> Callable[[str], str]:
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"clean.caption_language.detector {spec!r} cannot be loaded ({e}); install it or set "
            "the detector to null (the rule is then reported as not run)"
        ) from e
    if not callable(fn):
        raise ValueError(f"clean.caption_language.detector {spec!r} is not callable")
    return fn


def _mismatch(
    p: MismatchRule,
    align_dir: str | os.PathLike[str] | None,
    meta: dict[str, Any] | None,
    image_emb: np.ndarray | None,
    text_emb: np.ndarray | None,
    sample_ids: list[str],
) -> _Rule:
    from cmrops.cleaning.mismatch import calibrate_mismatch
    from cmrops.stages.align import load_null, load_output

    thr: dict[str, Any] = {"min_similarity": p.min_similarity}
    if not p.enabled:
        return _off("mismatch", thr)
    loaded = load_output(align_dir, meta, with_scores=True)
    if loaded.alignment is None or image_emb is None or text_emb is None:
        why = loaded.why if loaded.alignment is None else "preprocess wrote no embeddings"
        return _Rule("mismatch", "not_run", True, thr, why=why)
    null = load_null(align_dir) if p.min_similarity == "auto" else None
    if p.min_similarity == "auto" and null is None and loaded.threshold is None:
        return _Rule("mismatch", "not_run", True, thr, why=(
            f"min_similarity: auto needs the align stage's null scores ({loaded.why}); "
            "run `cmrops align` and pass --align, or set clean.mismatch.min_similarity"
        ))  # fmt: skip
    sim = np.full(len(image_emb), np.nan)
    measured = ~(np.isnan(image_emb).any(axis=1) | np.isnan(text_emb).any(axis=1))
    known = loaded.pair_scores or {}  # the align stage's (out-of-fold) scores, by sample_id
    fresh = measured & np.array([s not in known for s in sample_ids], bool)
    for i in np.flatnonzero(measured & ~fresh):
        sim[i] = known[sample_ids[i]]
    if fresh.any():  # samples the align stage did not see: the saved model scores them
        sim[fresh] = loaded.alignment.pair_scores(image_emb[fresh], text_emb[fresh])
    calibration = None
    if p.min_similarity != "auto":
        cut: float | None = float(p.min_similarity)
    elif null is not None:  # the flag rate read from these pairs' scores against the null
        calibration = calibrate_mismatch(sim[measured], null)
        cut = calibration["threshold"]
    else:  # an align output without null scores (older cmrops): its calibrated cut
        cut = loaded.threshold
    thr = {"min_similarity": None if cut is None else round(cut, 6)}
    if p.min_similarity == "auto":
        thr["calibrated"] = True
    flagged = measured & (sim < cut) if cut is not None else np.zeros(len(sim), bool)
    r = _Rule("mismatch", "run", True, thr, flagged=flagged)
    r.scores = sim
    for i in np.flatnonzero(flagged):
        r.evidence[int(i)] = {"similarity": round(float(sim[i]), 4)}
        r.detail[int(i)] = f"image-caption similarity {sim[i]:.3f} below {cut:.4f}"
    ok = sim[measured]
    r.report = {
        "alignment": loaded.alignment.kind,
        "encoder": loaded.why,
        "scored_by_align_stage": int((measured & ~fresh).sum()),
        "scored_here": int(fresh.sum()),
        "not_measured": int((~measured).sum()),
        "similarity_quantiles": (
            {str(q): round(float(np.quantile(ok, q)), 4) for q in (0.01, 0.05, 0.25, 0.5)}
            if len(ok) else {}
        ),
    }  # fmt: skip
    if calibration is not None:
        r.report["calibration"] = calibration
    return r


def _label_disagreement(p: LabelDisagreementRule, labels: _Labels, n: int) -> _Rule:
    a, b = p.methods
    thr = {"methods": [a, b], "max_overlap": p.max_overlap}
    if not p.enabled:
        return _off("label_disagreement", thr, p.drop)
    if not labels.available:
        return _Rule("label_disagreement", "not_run", p.drop, thr, why=labels.why)
    missing = [m for m in (a, b) if m not in labels.methods_present]
    if missing:
        return _Rule(
            "label_disagreement", "not_run", p.drop, thr,
            why=f"the label stage's evidence.parquet has no {' / '.join(missing)} candidates "
            "(method not in label.auto_methods, or no evidence.parquet)",
        )  # fmt: skip
    la = labels.by_method.get(a, [set() for _ in range(n)])
    lb = labels.by_method.get(b, [set() for _ in range(n)])
    flagged = np.zeros(n, bool)
    compared = 0
    r = _Rule("label_disagreement", "run", p.drop, thr)
    for i in range(n):
        if not la[i] or not lb[i]:
            continue
        compared += 1
        overlap = len(la[i] & lb[i]) / min(len(la[i]), len(lb[i]))
        if overlap <= p.max_overlap:
            flagged[i] = True
            r.evidence[i] = {a: sorted(la[i]), b: sorted(lb[i]), "overlap": round(overlap, 4)}
            r.detail[i] = (
                f"{a} labels {sorted(la[i])} and {b} labels {sorted(lb[i])} overlap "
                f"{overlap:.2f} <= {p.max_overlap}"
            )
    r.flagged = flagged
    r.report = {"compared": compared, "reported_only": not p.drop}
    return r


def _irrelevant(p: IrrelevantRule, labels: _Labels, c: dict[str, Any]) -> _Rule:
    thr: dict[str, Any] = {"vocabulary_size": len(labels.vocabulary)}
    if not p.enabled:
        return _off("irrelevant", thr)
    if not labels.available:
        return _Rule("irrelevant", "not_run", True, thr, why=labels.why)
    n = len(labels.effective)
    flagged = np.array([not s for s in labels.effective], dtype=bool)
    # An induced vocabulary is the captions' commonest words: a sample that uses none of them is
    # rarer, not off-topic - flagged and reported, never dropped.
    r = _Rule("irrelevant", "run", not labels.induced, thr, flagged=flagged)
    for i in np.flatnonzero(flagged):
        i = int(i)
        r.evidence[i] = {"labels": [], "provided": sorted(c["provided"][i])}
        r.detail[i] = "no label from the vocabulary after labelling"
    r.report = {"samples": n}
    if labels.induced:
        r.report["reported_only"] = (
            "the vocabulary was induced from the captions: a sample none of its words labels "
            "is not off-topic, so it is not dropped"
        )
    return r


# --------------------------------------------------------------------------- duplicates


@dataclass
class _Dup:
    rules: dict[str, _Rule]
    image_group: np.ndarray  # component per row of the full image graph
    image_size: np.ndarray
    caption_group: np.ndarray  # component per row of the caption graph (-1: no caption hash)
    caption_size: np.ndarray
    drop: dedup.Duplicates  # the graph duplicates are dropped on
    report: dict[str, Any]
    search: dict[str, Any]  # what the pHash candidate search did (throughput.json, volatile)


def _duplicates(
    params: CleanParams,
    c: dict[str, Any],
    image_emb: np.ndarray | None,
    eligible: np.ndarray,
    cache_dir: Path | None,
) -> _Dup:
    n = len(c["sample_id"])
    ex, near_p, cap_p = (
        params.exact_duplicate,
        params.near_duplicate_image,
        params.near_duplicate_caption,
    )
    resolution = c["width"] * c["height"]
    report: dict[str, Any] = {}

    exact = dedup.exact_edges(c["sha256"])
    near_thr = {
        "radius": near_p.radius,
        "dhash_radius": near_p.dhash_radius,
        "min_image_cosine": near_p.min_image_cosine,
        "drop": near_p.drop,
    }
    search: dict[str, Any] = {"queried": 0, "reused_pairs": 0, "index_size": n, "cache": "off"}
    if near_p.enabled:
        use_cos = near_p.min_image_cosine is not None and image_emb is not None
        # rows no rule can tell apart, in classes too large to list their pairs: searched
        # through their first row, the others linked to it (the same groups, linear pairs)
        same = collapse_identical(
            dedup.interchangeable_keys(c["phash"], c["dhash"], image_emb if use_cos else None)
        )
        rows = np.flatnonzero(same.keep)
        found, _, search = candidates.near_candidates(
            [c["sample_id"][i] for i in rows], c["phash"][rows], near_p.radius,
            cache_dir=cache_dir,
        )  # fmt: skip
        pairs = np.concatenate([rows[found].reshape(-1, 2), same.star])
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        dist = hamming(c["phash"][pairs[:, 0]], c["phash"][pairs[:, 1]])
        if same.classes:
            report["collapsed_identical_images"] = same.report()
        near, steps = dedup.near_edges(
            c["phash"], near_p.radius, dhash=c["dhash"], dhash_radius=near_p.dhash_radius,
            embeddings=image_emb if use_cos else None,
            min_image_cosine=near_p.min_image_cosine if use_cos else None,
            candidates=(pairs, dist),
        )  # fmt: skip
        report["near_image_pairs"] = {**steps, "kept": len(near)}
        if near_p.min_image_cosine is not None and not use_cos:
            report["near_image_pairs"]["cosine_confirmation"] = (
                "not run: preprocess wrote no image embeddings"
            )
    else:
        near = dedup.Edges.empty()

    # caption graph (SimHash 0 = no caption features: never a duplicate)
    cap_thr = {"radius": cap_p.radius}
    has_text = c["simhash"] != 0
    cap_rows = np.flatnonzero(has_text)
    if cap_p.enabled:
        # equal SimHashes beyond MAX_CLASS rows: linked to their first row (same groups)
        sub, cap_d = pairs_within(c["simhash"][cap_rows], cap_p.radius)
        cap_pairs = cap_rows[sub] if len(sub) else np.zeros((0, 2), np.int64)
        cap_collapsed = collapse_identical(c["simhash"][cap_rows])
        if cap_collapsed.classes:
            report["collapsed_identical_captions"] = cap_collapsed.report()
    else:
        cap_pairs, cap_d = np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    caption_group = components(n, cap_pairs)
    caption_group[~has_text] = -1
    caption_size = np.where(
        caption_group >= 0,
        np.bincount(np.maximum(caption_group, 0), minlength=n)[np.maximum(caption_group, 0)],
        0,
    )
    cap_key = set((cap_pairs[:, 0] * n + cap_pairs[:, 1]).tolist())

    image_edges = dedup.Edges.concat([exact if ex.enabled else dedup.Edges.empty(), near])
    image_group = components(n, image_edges.pairs)
    image_size = np.bincount(image_group, minlength=n)[image_group]

    # the graph duplicates are dropped on
    near_drop = near
    if near_p.enabled and near_p.drop == "with_caption":
        # the pair's captions are within the caption radius (what being a caption pair means;
        # asked of the pair itself, since collapsed caption classes list fewer pairs)
        a, b = near.pairs[:, 0], near.pairs[:, 1]
        sh_ = c["simhash"]
        with_cap = has_text[a] & has_text[b] & (hamming(sh_[a], sh_[b]) <= cap_p.radius)
        near_drop = near.select(with_cap & cap_p.enabled)
    drop_edges = dedup.Edges.concat([exact if ex.enabled else dedup.Edges.empty(), near_drop])
    drop = dedup.resolve(n, drop_edges, resolution, eligible)
    nb, nb_dist = dedup.nearest_neighbour(n, drop_edges, drop.rep)

    sha = np.asarray(c["sha256"], dtype=object)
    same_bytes = np.zeros(n, bool)
    has_rep = drop.rep >= 0
    same_bytes[has_rep] = sha[has_rep] == sha[drop.rep[has_rep]]
    exact_flag = drop.duplicate & same_bytes & ex.enabled
    near_flag = drop.duplicate & ~exact_flag
    near_name = (
        "near_duplicate_image" if near_p.drop == "always" else "near_duplicate_image_caption"
    )
    other_name = (
        "near_duplicate_image_caption"
        if near_name == "near_duplicate_image"
        else "near_duplicate_image"
    )

    rules: dict[str, _Rule] = {}
    ids = c["sample_id"]
    dh, ph, sh = c["dhash"], c["phash"], c["simhash"]

    def evidence(i: int, thr: dict[str, Any]) -> dict[str, Any]:
        k = int(drop.rep[i])
        cap_dist = int(hamming(sh[i], sh[k])) if has_text[i] and has_text[k] else None
        return {
            "threshold": thr,
            "kept": ids[k],
            "group": ids[int(drop.labels[i])],
            "group_size": int(drop.size[i]),
            "phash_distance": int(hamming(ph[i], ph[k])),
            "dhash_distance": int(hamming(dh[i], dh[k])),
            "caption_distance": cap_dist,
            "caption_duplicate": bool(
                cap_dist is not None and cap_p.enabled and cap_dist <= cap_p.radius
            ),
            "identical_bytes": bool(same_bytes[i]),
            "matched": ids[int(nb[i])] if nb[i] >= 0 else None,
            "matched_phash_distance": int(nb_dist[i]) if nb[i] >= 0 else None,
            "resolution": int(resolution[i]),
            "kept_resolution": int(resolution[k]),
        }

    if ex.enabled:
        r = _Rule("exact_duplicate", "run", True, {"sha256": "identical"}, flagged=exact_flag)
        for i in np.flatnonzero(exact_flag):
            r.evidence[int(i)] = evidence(int(i), {"sha256": "identical"})
            r.detail[int(i)] = f"identical image bytes to kept {ids[int(drop.rep[i])]}"
        rules["exact_duplicate"] = r
    else:
        rules["exact_duplicate"] = _off("exact_duplicate", {"sha256": "identical"})
    thr_all = {**near_thr, "caption_radius": cap_p.radius}
    if near_p.enabled:
        r = _Rule(near_name, "run", True, thr_all, flagged=near_flag)
        for i in np.flatnonzero(near_flag):
            e = evidence(int(i), thr_all)
            r.evidence[int(i)] = e
            r.detail[int(i)] = (
                f"near-duplicate image of kept {e['kept']} (pHash distance {e['phash_distance']}"
                f" <= {near_p.radius}{', caption too' if e['caption_duplicate'] else ''})"
            )
        rules[near_name] = r
        rules[other_name] = _Rule(
            other_name, "off", True, thr_all,
            why=f"near_duplicate_image.drop is {near_p.drop!r}",
        )  # fmt: skip
    else:
        rules["near_duplicate_image"] = _off("near_duplicate_image", thr_all)
        rules["near_duplicate_image_caption"] = _off("near_duplicate_image_caption", thr_all)

    # caption near-duplicates: reported only
    img_key = set((image_edges.pairs[:, 0] * n + image_edges.pairs[:, 1]).tolist())
    both = sum(1 for k in cap_key if k in img_key)
    cap_rule = _Rule("near_duplicate_caption", "run" if cap_p.enabled else "off", False, cap_thr)
    if cap_p.enabled:
        cap_rule.flagged = caption_size >= 2
        only = [
            (a, b, d)
            for (a, b), d in zip(cap_pairs.tolist(), cap_d.tolist(), strict=True)
            if a * n + b not in img_key
        ]
        cap_rule.report = {
            "pairs": len(cap_pairs),
            "pairs_image_also_duplicate": both,
            "pairs_image_differs": len(only),
            "examples_image_differs": [
                {"a": ids[a], "b": ids[b], "caption_distance": d,
                 "phash_distance": int(hamming(ph[a], ph[b]))}
                for a, b, d in only[:_EXAMPLES]
            ],
        }  # fmt: skip
    else:
        cap_rule.why = "disabled in params"
    rules["near_duplicate_caption"] = cap_rule

    report["image_groups"] = size_histogram(image_group)
    report["caption_groups"] = size_histogram(caption_group[caption_group >= 0])
    report["drop_groups"] = size_histogram(drop.labels)
    report["representative_rule"] = "largest width*height, then smallest sample_id"
    return _Dup(rules, image_group, image_size, caption_group, caption_size, drop, report, search)


# --------------------------------------------------------------------------- outputs


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _quarantine_table(
    c: dict[str, Any],
    rules: Mapping[str, _Rule],
    reason_of: Mapping[int, str],
    overruled: Mapping[int, list[str]],
) -> pa.Table:
    rows = []
    for i in sorted(reason_of):
        rule = rules[reason_of[i]]
        evidence = rule.evidence.get(i, {})
        if "threshold" not in evidence:
            evidence = {"threshold": rule.threshold, **evidence}
        also = [
            name
            for name in RULE_ORDER
            if name != rule.name and rules[name].flagged is not None and rules[name].flagged[i]
        ]
        if also:
            evidence = {**evidence, "also_flagged_by": also}
        if i in overruled:  # a person overruled another rule's quarantine of this sample
            evidence = {**evidence, "overruled": overruled[i]}
        rows.append(
            {
                "sample_id": c["sample_id"][i],
                "stage": STAGE,
                "source": c["source"][i],
                "source_key": c["source_key"][i],
                "reason": rule.name,
                "detail": rule.detail.get(i, rule.name),
                "evidence": _json(evidence),
            }
        )
    return pa.Table.from_pylist(rows, schema=QUARANTINE)


def _groups_table(c: dict[str, Any], dup: _Dup, dropped: np.ndarray) -> pa.Table:
    ids = c["sample_id"]
    rows = []
    for i in range(len(ids)):
        in_img = dup.image_size[i] >= 2
        in_cap = dup.caption_size[i] >= 2
        if not (in_img or in_cap):
            continue
        rows.append(
            {
                "sample_id": ids[i],
                "image_group": ids[int(dup.image_group[i])] if in_img else None,
                "caption_group": ids[int(dup.caption_group[i])] if in_cap else None,
                "kept": not bool(dropped[i]),
            }
        )
    return pa.Table.from_pylist(rows, schema=CLEAN_GROUPS)


def _metrics(
    n: int,
    kept: int,
    reason_of: Mapping[int, str],
    rules: Mapping[str, _Rule],
    dup: _Dup,
    labels: _Labels,
) -> dict[str, Any]:
    by_reason = Counter(reason_of.values())
    per_rule: dict[str, Any] = {}
    not_run: dict[str, str] = {}
    for name in (*RULE_ORDER, *REPORTED):
        r = rules[name]
        entry: dict[str, Any] = {"status": r.status, "drops": r.drops, "threshold": r.threshold}
        if r.status == "run":
            entry["flagged"] = int(r.flagged.sum()) if r.flagged is not None else 0
            entry["dropped"] = by_reason.get(name, 0)
        else:
            entry["why"] = r.why
            if r.status == "not_run":
                not_run[name] = r.why or ""
        if r.report:
            entry["report"] = r.report
        per_rule[name] = entry
    return {
        "stage": STAGE,
        "inputs": n,
        "kept": kept,
        "quarantined": len(reason_of),
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "rule_order": list(RULE_ORDER),
        "rules": per_rule,
        "not_run": not_run,
        "duplicates": dup.report,
        "labels": {
            "available": labels.available,
            "vocabulary_size": len(labels.vocabulary),
            "labels_outside_vocabulary": labels.outside_vocabulary,
            "label_rows_of_unknown_samples": labels.stale_rows,
            "methods_in_evidence": sorted(labels.methods_present),
        },
    }
