"""Label stage: every sample's labels, with their source, method, confidence and evidence.

``run(params, interim_dir, out_dir)`` reads ``<interim>/samples.parquet``
(:data:`~cmrops.schema.INTERIM_SAMPLES`), ``<interim>/features/`` (zero-shot only) and the manual
label / review answer files named in params, and writes under ``out_dir``:

* ``labels.parquet`` - :data:`~cmrops.schema.LABELS`: the effective labels, one row per
  (sample_id, label), sorted;
* ``evidence.parquet`` - :data:`~cmrops.schema.LABEL_EVIDENCE`: every candidate of every method
  before resolution, with whether it passed its threshold and whether it was selected;
* ``sample_labels.parquet`` - :data:`~cmrops.schema.LABEL_SAMPLES`: one row per input sample
  (none is dropped here; a sample without labels has ``decided_by = "none"``);
* ``vocabulary.json`` - the labels and the caption terms of each;
* ``review_queue.csv``, ``review_tasks.json``, ``review_config.xml`` - the review queue
  (:mod:`cmrops.labels.review`);
* ``review_log.json`` - how much of the project's review answer log (``review/answers.jsonl``,
  :mod:`cmrops.answers`) this run merged, so the dashboard tells merged answers from pending;
* ``metrics.json`` - counts per label / source / method, agreement between methods, unknown
  labels, samples without a label, review queue size.

**Vocabulary.** ``vocabulary`` in params, plus the union of the labels the sources provide
when ``from_sources`` is true; when that is empty, a keyword vocabulary is induced from the
captions (``induce``, :mod:`cmrops.labels.induce`; ``"induced": true`` in vocabulary.json), or,
with ``induce.enabled: false``, it is an error. Caption terms per label come from
``synonym_presets`` and ``synonyms`` (:mod:`cmrops.labels.vocab`). A label outside it - a
source's category with ``from_sources: false``, a manual file's typo - is counted under
``unknown_labels`` in the metrics and logged, never written and never fatal.

**Candidates.** Automatic (source ``auto``), for the methods listed in ``auto_methods``:
``provided`` (the source's labels, confidence 1.0), ``keyword`` (caption terms; confidence = the
fraction of the sample's captions that mention the label, :mod:`cmrops.labels.keywords`) and
``zeroshot`` (image embedding against label prompts embedded by the features' text encoder, both
mapped into the align stage's shared space - ``<align>/model``, ``align_dir=``: learned heads, or
the identity for an aligned dual encoder, :mod:`cmrops.stages.align`, :mod:`cmrops.labels.zeroshot`;
without an alignment reported as not run, with the reason). Human:
``manual`` files and the ``review.answers`` file (:mod:`cmrops.labels.manual` - CSV, JSONL or a
Label Studio export; a key is a sample_id or a source_key; an unknown key is an error naming the
file and the keys), and the project's review answer log (``--review-log``, default
``review/answers.jsonl``, written by the dashboard: the latest answer per sample, merged whenever
the file is there, no params edit; it supersedes the ``review.answers`` file for the samples it
answers; answers about samples no longer in the input are skipped and counted).

**Resolution** (:mod:`cmrops.labels.resolve`), per sample: reviewed > manual > auto; automatic
labels count when their confidence reaches their method's threshold, combined by ``combine``
(``fallback``: the first method of ``auto_methods`` with a passing label decides; ``union``).

Deterministic: the same inputs give byte-identical outputs, each written atomically.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cmrops import answers, io
from cmrops.labels import review, zeroshot
from cmrops.labels.induce import InduceParams, induce_vocabulary
from cmrops.labels.keywords import KeywordMatcher
from cmrops.labels.manual import FileFormat, KeyIndex, Statement, read_statements
from cmrops.labels.presets import PRESETS
from cmrops.labels.resolve import Candidate, Combine, Decision, agreement, resolve
from cmrops.labels.vocab import Vocabulary, clean_label
from cmrops.schema import LABEL_EVIDENCE, LABEL_SAMPLES, LABELS

log = logging.getLogger(__name__)

STAGE = "label"
AutoMethod = Literal["provided", "keyword", "zeroshot"]
_NEEDED = (
    "sample_id",
    "source",
    "source_key",
    "image_path",
    "labels",
    "captions_norm",
    "feature_row",
)
_SHOWN_UNKNOWN = 20  # unknown labels listed per origin in the log


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class ManualFile:
    """A label file; a plain path string in params means all defaults."""

    path: str
    format: FileFormat = "auto"  # from the extension: .csv/.tsv, .jsonl/.ndjson, .json
    key_column: str | None = None  # default: key, sample_id, source_key (LS: data.sample_id, ...)
    label_column: str | None = None  # default: answer, label, labels


@dataclass(frozen=True)
class KeywordParams:
    threshold: float = 0.4  # passes when at least this fraction of the captions mention it
    plurals: bool = True  # a term also matches with "s" / "es" appended

    def __post_init__(self) -> None:
        _check_unit("keyword.threshold", self.threshold)


@dataclass(frozen=True)
class ZeroShotParams:
    prompts: tuple[str, ...] = ("a photo of a {label}.",)  # averaged per label
    temperature: float = 0.01  # softmax(sim / T) over the vocabulary; CLIP's scale 100 = 0.01
    threshold: float = 0.5  # passes when its softmax confidence reaches this
    min_similarity: float | None = None  # and, when set, its cosine similarity reaches this
    # Content-free prompts (the prompts without a label, a "none of these" class as in Zhao et
    # al.'s contextual calibration): a label passes only when the image is nearer to it than to
    # every one of these, so an off-topic image abstains instead of taking the least bad label.
    # []: off.
    background: tuple[str, ...] = ("a photo.",)  # (the default prompt without its label)
    top_k: int = 3  # candidates recorded per image
    device: Literal["auto", "cpu", "cuda"] = "cpu"  # for the prompt embeddings
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check_unit("zeroshot.threshold", self.threshold)
        if not self.prompts or any("{label}" not in p for p in self.prompts):
            raise ValueError("zeroshot.prompts: give at least one prompt, each with '{label}'")
        if self.temperature <= 0:
            raise ValueError(f"zeroshot.temperature must be > 0, got {self.temperature}")
        if any("{label}" in p or not p.strip() for p in self.background):
            raise ValueError("zeroshot.background: content-free prompts, without '{label}'")
        if self.top_k < 1 or self.batch_size < 1:
            raise ValueError("zeroshot.top_k and zeroshot.batch_size must be >= 1")


@dataclass(frozen=True)
class ReviewParams:
    size: int = 100  # samples in the review queue (0: an empty queue)
    answers: str | ManualFile | None = None  # answered queue: filled-in CSV or Label Studio export
    image_root: str = ""  # prefix of image_path in review_tasks.json (where Label Studio finds it)

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"review.size must be >= 0, got {self.size}")


def _default_methods() -> tuple[AutoMethod, ...]:
    return ("provided", "keyword", "zeroshot")


@dataclass(frozen=True)
class LabelParams:
    """The ``label:`` section of params.yaml."""

    vocabulary: tuple[str, ...] = ()  # labels; with from_sources, added to the sources' labels
    from_sources: bool = True  # add every label a source provides
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # label -> caption terms
    synonym_presets: tuple[Literal["coco"], ...] = ()  # built-in synonym maps (labels/presets.py)
    auto_methods: tuple[AutoMethod, ...] = field(default_factory=_default_methods)  # precedence
    combine: Combine = "fallback"  # fallback: first method with a passing label decides; union
    keyword: KeywordParams = field(default_factory=KeywordParams)
    zeroshot: ZeroShotParams = field(default_factory=ZeroShotParams)
    manual: tuple[str | ManualFile, ...] = ()  # human label files, merged in order
    review: ReviewParams = field(default_factory=ReviewParams)
    induce: InduceParams = field(default_factory=InduceParams)  # no labels at all: from captions

    def __post_init__(self) -> None:
        if len(set(self.auto_methods)) != len(self.auto_methods):
            raise ValueError(f"auto_methods lists a method twice: {list(self.auto_methods)}")


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _as_file(spec: str | ManualFile) -> ManualFile:
    return ManualFile(spec) if isinstance(spec, str) else spec


# --------------------------------------------------------------------------- entry points


def cli_main(args: Any) -> int:
    """``cmrops label --params P --interim I --out O``."""
    from cmrops.params import load_section

    params = load_section(args.params, STAGE, LabelParams)
    m = run(
        params,
        args.interim,
        args.out,
        base_dir=Path(args.params).resolve().parent,
        align_dir=args.align,
        review_log=args.review_log,
    )
    zs = m["methods"].get("zeroshot", {})
    print(
        f"label: {m['samples']} samples, {m['labelled']} labelled, {m['unlabelled']} without a "
        f"label; {m['labels']} labels, samples decided by {m['decided_by']}; vocabulary "
        f"{m['vocabulary']['size']}; review queue {m['review']['queue']} -> {args.out}"
    )
    if zs and not zs.get("run"):
        print(f"  zeroshot not run: {zs['reason']}")
    for origin, counts in m["unknown_labels"].items():
        print(f"  unknown labels from {origin}: {sum(counts.values())} ({len(counts)} distinct)")
    return 0


def run(
    params: LabelParams,
    interim_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    base_dir: str | os.PathLike[str] | None = None,
    prompt_embedder: zeroshot.PromptEmbedder | None = None,
    align_dir: str | os.PathLike[str] | None = None,
    review_log: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Label the samples of ``interim_dir`` into ``out_dir`` (see module docstring).

    Relative label file paths are resolved against ``base_dir`` (default: the working
    directory). ``prompt_embedder`` embeds zero-shot prompts; by default the text encoder named in
    ``features/meta.json`` is loaded through :mod:`cmrops.encoders`. ``align_dir`` is the align
    stage's output (:func:`cmrops.stages.align.load_output`). ``review_log`` is the project's
    review answer log (:mod:`cmrops.answers`), merged when the file is there. Returns the
    metrics.
    """
    interim, out = Path(interim_dir), Path(out_dir)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    samples = _load_samples(interim)
    ids = samples["sample_id"]
    vocab, vocab_json = _vocabulary(params, samples["labels"], samples["captions_norm"])

    ev = _Evidence(vocab)
    methods: dict[str, dict[str, Any]] = {}
    for method in params.auto_methods:
        if method == "provided":
            methods[method] = _provided(ev, samples)
        elif method == "keyword":
            methods[method] = _keywords(ev, samples, params.keyword)
        else:
            methods[method] = _zeroshot(
                ev, samples, interim, params.zeroshot, prompt_embedder, align_dir
            )

    log_path = Path(review_log) if review_log is not None else None
    has_log = log_path is not None and log_path.is_file()
    index = (  # only human label files name samples by key: no index of a million keys without
        KeyIndex(
            zip(ids, samples["source"], samples["source_key"], strict=True),
            _quarantined(interim),
        )
        if params.manual or params.review.answers is not None or has_log
        else KeyIndex(())
    )
    files: dict[str, Any] = {}
    for spec in params.manual:
        files[_as_file(spec).path] = _human(ev, index, _as_file(spec), base, "manual")
    shown_log = None if review_log is None else os.fspath(review_log)
    from_log, snapshot, answered = _review_log(ev, index, log_path, shown_log)
    file_answers: dict[str, Any] | None = None
    if params.review.answers is not None:
        spec = _as_file(params.review.answers)
        file_answers = {"file": spec.path,
                        **_human(ev, index, spec, base, "reviewed", answered)}  # fmt: skip

    decisions = {
        sid: resolve(
            sid, ev.by_sample.get(sid, []), ev.human_empty, params.auto_methods, params.combine
        )
        for sid in ids
    }
    queue = _review_queue(params, samples, ev, decisions, methods)
    rows = _queue_rows(queue, samples, ev, decisions)

    out.mkdir(parents=True, exist_ok=True)
    selected = {id(c) for d in decisions.values() for c in d.selected.values()}
    _write_rows(out / "labels.parquet", LABELS, _label_rows(decisions))
    _write_rows(out / "evidence.parquet", LABEL_EVIDENCE, _evidence_rows(ev, selected))
    _write_rows(out / "sample_labels.parquet", LABEL_SAMPLES, _sample_rows(ids, decisions, queue))
    io.write_json(out / "vocabulary.json", vocab_json)
    review.write_queue_csv(out / "review_queue.csv", rows)
    review.write_tasks(
        out / "review_tasks.json", review.label_studio_tasks(rows, params.review.image_root)
    )
    review.write_text(out / "review_config.xml", review.label_studio_config(vocab.labels))
    metrics = _metrics(params, vocab, ev, decisions, methods, files, file_answers, queue)
    metrics["review"]["log"] = from_log
    io.write_json(out / "metrics.json", metrics)
    counts = {k: v for k, v in (from_log or {}).items() if isinstance(v, int)}
    io.write_json(
        out / answers.MERGED_FILE, answers.merged_record(snapshot, shown_log if has_log else None,
                                                         **counts)
    )  # fmt: skip
    return metrics


# --------------------------------------------------------------------------- inputs


def _load_samples(interim: Path) -> dict[str, list[Any]]:
    """The columns of interim samples this stage needs, sorted by sample_id."""
    path = interim / "samples.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not found - run `cmrops preprocess` first (or pass --interim)"
        )
    missing = [c for c in _NEEDED if c not in pq.read_schema(path).names]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the INTERIM_SAMPLES "
            "contract of cmrops/schema.py (re-run `cmrops preprocess`)"
        )
    table = io.read_parquet(path, columns=list(_NEEDED))  # not the raw captions, extra, ...
    if table["sample_id"].null_count:
        raise ValueError(f"{path}: sample_id holds nulls; re-run `cmrops preprocess`")
    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))
    cols = _LazyColumns(table, {name: table[name].to_pylist() for name in _EAGER})
    sids = cols["sample_id"]
    dup = sorted({a for a, b in itertools.pairwise(sids) if a == b})
    if dup:
        raise ValueError(f"{path}: sample_id repeated: {', '.join(dup[:5])}")
    cols["labels"] = [list(x or []) for x in cols["labels"]]
    cols["captions_norm"] = [list(x or []) for x in cols["captions_norm"]]
    cols["feature_row"] = [-1 if x is None else int(x) for x in cols["feature_row"]]
    return cols


#: Read for every sample; the other _NEEDED columns only for the review queue and key index.
_EAGER = ("sample_id", "labels", "captions_norm", "feature_row")


class _LazyColumns(dict[str, list[Any]]):
    """Columns as Python lists; those not in ``_EAGER`` are converted on first use."""

    def __init__(self, table: pa.Table, eager: dict[str, list[Any]]) -> None:
        super().__init__(eager)
        self._table = table

    def __missing__(self, key: str) -> list[Any]:
        if key not in _NEEDED:
            raise KeyError(key)
        self[key] = values = self._table[key].to_pylist()
        return values


def _quarantined(interim: Path) -> list[tuple[str | None, str | None, str | None]]:
    path = interim / "quarantine.parquet"
    if not path.is_file():
        return []
    present = [c for c in ("sample_id", "source", "source_key") if c in pq.read_schema(path).names]
    t = io.read_parquet(path, columns=present)
    cols = [t[c].to_pylist() if c in t.column_names else [None] * t.num_rows
            for c in ("sample_id", "source", "source_key")]  # fmt: skip
    return list(zip(*cols, strict=True))


def _vocabulary(
    params: LabelParams, provided: list[list[str]], captions: list[list[str]]
) -> tuple[Vocabulary, dict[str, Any]]:
    labels = list(params.vocabulary)
    if params.from_sources:
        labels += sorted({clean_label(x) for row in provided for x in row})
    induced = None
    if not any(clean_label(x) for x in labels) and params.induce.enabled:
        labels, induced = induce_vocabulary(
            captions, params.induce, agreement=params.keyword.threshold
        )
        log.info("label: no labels given; induced %d from the captions", len(labels))
    synonyms: dict[str, list[str]] = defaultdict(list)
    for name in params.synonym_presets:
        for label, words in PRESETS[name].items():
            synonyms[label].extend(words)
    for label, words in params.synonyms.items():
        synonyms[label].extend(words)
    vocab, unused = Vocabulary.build(labels, synonyms)
    user_unused = [k for k in unused if k in params.synonyms]  # a preset covers more than needed
    if user_unused:
        log.warning("label: synonyms given for labels outside the vocabulary: %s", user_unused)
    info = {
        **vocab.to_json(),
        "explicit": sorted({clean_label(x) for x in params.vocabulary}),
        "from_sources": params.from_sources,
        "synonym_presets": list(params.synonym_presets),
        "synonyms_outside_vocabulary": user_unused,
        "induced": induced is not None,
    }
    if induced is not None:
        info["induce"] = induced
    return vocab, info


# --------------------------------------------------------------------------- candidates


class _Evidence:
    """Candidates per sample, the kept sets per method, unknown labels and explicit no-labels."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.by_sample: dict[str, list[Candidate]] = defaultdict(list)
        self.kept: dict[str, dict[str, frozenset[str]]] = {}
        self.applicable: dict[str, set[str]] = {}
        self.unknown: dict[str, Counter[str]] = defaultdict(Counter)
        self.human_empty: dict[str, set[str]] = {"reviewed": set(), "manual": set()}
        self.thresholds: dict[str, float] = {}
        self._seen: set[tuple[str, str, str]] = set()  # (sample, label, human source)
        self._sets: dict[frozenset[str], frozenset[str]] = {}

    def add(self, c: Candidate) -> None:
        self.by_sample[c.sample_id].append(c)

    def add_human(self, c: Candidate) -> bool:
        key = (c.sample_id, c.label, c.source)
        if key in self._seen:
            return False
        self._seen.add(key)
        self.add(c)
        return True

    def record(self, method: str, sid: str, passed: set[str]) -> None:
        key = frozenset(passed)  # a handful of distinct sets: one shared object each
        self.kept.setdefault(method, {})[sid] = self._sets.setdefault(key, key)
        self.applicable.setdefault(method, set()).add(sid)


def _detail(**facts: Any) -> str:
    """The JSON detail of a candidate; the few distinct ones are shared strings."""
    try:
        return _shared_detail(tuple(sorted(facts.items())))
    except TypeError:  # an unhashable fact (a list)
        return json.dumps(facts, sort_keys=True, ensure_ascii=False)


@functools.lru_cache(maxsize=4096)
def _shared_detail(items: tuple[tuple[str, Any], ...]) -> str:
    return json.dumps(dict(items), sort_keys=True, ensure_ascii=False)


def _provided(ev: _Evidence, samples: dict[str, list[Any]]) -> dict[str, Any]:
    ev.applicable["provided"] = set()
    ev.kept["provided"] = {}
    n = 0
    for sid, raw_labels in zip(samples["sample_id"], samples["labels"], strict=True):
        if not raw_labels:
            continue
        passed = set()
        for raw in raw_labels:
            label = ev.vocab.canonical(raw)
            if label is None:
                ev.unknown["provided"][clean_label(raw)] += 1
                continue
            if label in passed:
                continue
            passed.add(label)
            extra = {"raw": raw} if raw != label else {}
            ev.add(Candidate(sid, label, "auto", "provided", 1.0, True, _detail(**extra)))
            n += 1
        ev.record("provided", sid, passed)
    return {"run": True, "samples": len(ev.applicable["provided"]), "candidates": n}


def _keywords(ev: _Evidence, samples: dict[str, list[Any]], p: KeywordParams) -> dict[str, Any]:
    matcher = KeywordMatcher(ev.vocab, plurals=p.plurals)
    ev.applicable["keyword"] = set()
    ev.kept["keyword"] = {}
    ev.thresholds["keyword"] = p.threshold
    n = 0
    for sid, captions in zip(samples["sample_id"], samples["captions_norm"], strict=True):
        if not captions:
            continue
        passed = set()
        for label, hits in sorted(matcher.score(captions).items()):
            conf = hits / len(captions)
            ok = conf >= p.threshold
            if ok:
                passed.add(label)
            ev.add(Candidate(sid, label, "auto", "keyword", conf, ok,
                             _detail(captions=hits, of=len(captions))))  # fmt: skip
            n += 1
        ev.record("keyword", sid, passed)
    return {"run": True, "samples": len(ev.applicable["keyword"]), "candidates": n,
            "threshold": p.threshold}  # fmt: skip


def _zeroshot(
    ev: _Evidence,
    samples: dict[str, list[Any]],
    interim: Path,
    p: ZeroShotParams,
    embedder: zeroshot.PromptEmbedder | None,
    align_dir: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    from cmrops.stages.align import load_output

    meta_path = interim / "features" / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None:
        why = zeroshot.alignment(meta)[1]
        log.info("label: zero-shot not run: %s", why)
        return {"run": False, "reason": why}
    loaded = load_output(align_dir, meta)
    why = loaded.why
    if loaded.alignment is None:
        log.info("label: zero-shot not run: %s", why)
        return {"run": False, "reason": why}
    shared = loaded.alignment
    image_path = interim / "features" / "image.npy"
    if not image_path.is_file():
        raise FileNotFoundError(
            f"{image_path}: meta.json promises embeddings but the file is missing"
        )
    images = io.read_npy(image_path, mmap_mode="r")
    sids = [s for s, r in zip(samples["sample_id"], samples["feature_row"], strict=True) if r >= 0]
    rows = np.asarray([r for r in samples["feature_row"] if r >= 0], dtype=np.int64)
    if rows.size and rows.max() >= len(images):
        raise ValueError(
            f"{image_path}: has {len(images)} rows but samples.parquet refers to row {rows.max()}"
        )
    assert meta is not None
    text_encoder = str((meta.get("text") or {}).get("encoder"))
    embed = embedder or zeroshot.encoder_embedder(text_encoder, p.device, p.batch_size)
    label_emb = shared.text(zeroshot.label_embeddings(ev.vocab.labels, p.prompts, embed))
    background = shared.text(np.asarray(embed(list(p.background)))) if p.background else None
    abstained = 0
    ev.applicable["zeroshot"] = set()
    ev.kept["zeroshot"] = {}
    ev.thresholds["zeroshot"] = p.threshold
    k = min(p.top_k, len(ev.vocab))
    n = 0
    batch = 4096
    for lo in range(0, len(sids), batch):
        shared_images = shared.image(np.asarray(images[rows[lo : lo + batch]]))
        sims, probs = zeroshot.scores(shared_images, label_emb, p.temperature)
        floor = (
            np.full(len(sims), -np.inf)
            if background is None
            else (shared_images.astype(np.float64) @ background.T.astype(np.float64)).max(axis=1)
        )
        abstained += int((sims.max(axis=1) <= floor).sum())
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for i, sid in enumerate(sids[lo : lo + batch]):
            passed = set()
            extra = {} if background is None else {"background": round(float(floor[i]), 6)}
            for rank, j in enumerate(top[i], 1):
                conf, sim = round(float(probs[i, j]), 6), round(float(sims[i, j]), 6)
                ok = conf >= p.threshold and (p.min_similarity is None or sim >= p.min_similarity)
                ok = ok and sims[i, j] > floor[i]
                label = ev.vocab.labels[j]
                if ok:
                    passed.add(label)
                ev.add(Candidate(sid, label, "auto", "zeroshot", conf, ok,
                                 _detail(similarity=sim, rank=rank, **extra)))  # fmt: skip
                n += 1
            ev.record("zeroshot", sid, passed)
    return {"run": True, "reason": why, "samples": len(sids), "candidates": n,
            "text_encoder": text_encoder, "alignment": shared.kind, "threshold": p.threshold,
            "background": list(p.background), "abstained": abstained,
            "no_embedding": len(samples["sample_id"]) - len(sids)}  # fmt: skip


def _human(
    ev: _Evidence,
    index: KeyIndex,
    spec: ManualFile,
    base: Path,
    source: str,
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Add the statements of one human label file as ``source`` candidates (but none about the
    samples in ``skip``: answered again in the project's review log, which is later)."""
    path = Path(spec.path).expanduser()
    path = path if path.is_absolute() else base / path
    statements = read_statements(path, spec.format, spec.key_column, spec.label_column, spec.path)
    resolved, skipped = index.resolve_all(statements, spec.path)
    superseded = sum(1 for sid, _ in resolved if sid in skip)
    resolved = [(sid, st) for sid, st in resolved if sid not in skip]
    info = _add_human(ev, resolved, source, f"{source} {spec.path}")
    info = {"statements": len(statements), **info, "quarantined_keys": skipped,
            "sha256": io.sha256_file(path)}  # fmt: skip
    if superseded:
        info["superseded_by_review_log"] = superseded
    if skipped:
        log.warning(
            "label: %s: %d key(s) of samples quarantined upstream, skipped", spec.path, skipped
        )
    return info


def _add_human(
    ev: _Evidence,
    resolved: Sequence[tuple[str, Statement]],
    source: str,
    origin: str,
    extra_of: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Add resolved human statements as ``source`` candidates (``extra_of``: more detail per
    sample, e.g. who answered and when)."""
    method = "review" if source == "reviewed" else "manual"
    n_labels = 0
    touched: set[str] = set()
    for sid, st in resolved:
        if not st.labels:
            ev.human_empty[source].add(sid)
            touched.add(sid)
            continue
        more = (extra_of or {}).get(sid, {})
        for raw in st.labels:
            label = ev.vocab.canonical(raw)
            if label is None:
                ev.unknown[origin][clean_label(raw)] += 1
                continue
            extra = {"raw": raw} if raw != label else {}
            if ev.add_human(Candidate(sid, label, source, method, 1.0, True,
                                      _detail(at=st.where, **more, **extra))):  # fmt: skip
                n_labels += 1
            touched.add(sid)
    return {"samples": len(touched), "labels": n_labels}


def _review_log(
    ev: _Evidence, index: KeyIndex, path: Path | None, shown: str | None
) -> tuple[dict[str, Any] | None, answers.LogSnapshot | None, frozenset[str]]:
    """Merge the latest ``labels`` answer per sample of the project's review log
    (:mod:`cmrops.answers`) as ``reviewed`` candidates. Returns the metrics, what was read, and
    the samples answered (they override the ``review.answers`` file)."""
    if path is None or not path.is_file():
        return None, None, frozenset()
    snap = answers.read(path)
    latest = answers.latest(snap.records, "labels")
    resolved: list[tuple[str, Statement]] = []
    extra: dict[str, dict[str, Any]] = {}
    gone = unknown = 0
    for key, rec in latest.items():
        sid, status = index.resolve(key)
        if sid is None:  # a sample quarantined upstream since, or no longer collected
            gone += status == "quarantined"
            unknown += status != "quarantined"
            continue
        resolved.append((sid, Statement(sid, None, rec.labels, f"{shown}:{rec.line}")))
        extra[sid] = {"who": rec.data["who"], "answered_at": rec.data["at"],
                      "action": rec.data["action"]}  # fmt: skip
    if unknown or gone:
        log.warning("label: %s: answers about %d sample(s) not in the input (%d quarantined "
                    "upstream) skipped", shown, unknown + gone, gone)  # fmt: skip
    info = _add_human(ev, resolved, "reviewed", f"reviewed {shown}", extra)
    info = {"answers": sum(r.kind == "labels" for r in snap.records), **info,
            "samples_answered": len(latest), "quarantined_samples": gone,
            "unknown_samples": unknown, "torn_bytes": snap.torn_bytes}  # fmt: skip
    return info, snap, frozenset(sid for sid, _ in resolved)


# --------------------------------------------------------------------------- review queue


def _review_queue(
    params: LabelParams,
    samples: dict[str, list[Any]],
    ev: _Evidence,
    decisions: dict[str, Decision],
    methods: dict[str, dict[str, Any]],
) -> list[review.QueueItem]:
    ran = [m for m in params.auto_methods if methods[m].get("run")]
    items = []
    for sid in samples["sample_id"]:
        d = decisions[sid]
        if d.decided_by not in ("auto", "none"):
            continue
        kept = {m: ev.kept[m][sid] for m in ran if sid in ev.applicable.get(m, set())}
        if params.combine == "fallback" and d.selected:
            deciders = {c.method for c in d.selected.values()}
        else:
            deciders = set(kept)
        near = [
            (c.label, c.method, c.confidence, ev.thresholds[c.method])
            for c in ev.by_sample.get(sid, [])
            if c.source == "auto" and c.method in deciders and c.method in ev.thresholds
        ]
        item = review.priority(sid, kept, near, len(d.selected))
        if item is not None:
            items.append(item)
    return review.select(items, params.review.size)


def _queue_rows(
    queue: Sequence[review.QueueItem],
    samples: dict[str, list[Any]],
    ev: _Evidence,
    decisions: dict[str, Decision],
) -> list[dict[str, Any]]:
    ids = samples["sample_id"]  # sorted: a queued sample is found by bisection
    rows = []
    for rank, q in enumerate(queue, 1):
        i = bisect.bisect_left(ids, q.sample_id)
        cands = sorted(ev.by_sample.get(q.sample_id, []), key=lambda c: (c.label, c.method))
        rows.append(
            {
                "rank": rank,
                "sample_id": q.sample_id,
                "source": samples["source"][i],
                "source_key": samples["source_key"][i],
                "image_path": samples["image_path"][i],
                "captions": samples["captions_norm"][i],
                "auto_labels": decisions[q.sample_id].labels,
                "candidates": "; ".join(f"{c.label} {c.confidence:.2f} {c.method}" for c in cands),
                "reason": q.reason,
                "priority": q.priority,
                "detail": q.detail,
                "answer": "",
            }
        )
    return rows


# --------------------------------------------------------------------------- outputs


def _batched(rows: Iterator[dict[str, Any]], n: int = io.ROW_GROUP_ROWS) -> Iterator[list[Any]]:
    while batch := list(itertools.islice(rows, n)):
        yield batch


def _write_rows(path: Path, schema: pa.Schema, rows: Iterator[dict[str, Any]]) -> None:
    """Stream rows into ``path`` a row group at a time (never the whole table as dicts)."""
    with io.parquet_writer(path, schema) as writer:
        for batch in _batched(rows):
            writer.write_rows(batch)


def _label_rows(decisions: dict[str, Decision]) -> Iterator[dict[str, Any]]:
    for sid in sorted(decisions):
        for label, c in sorted(decisions[sid].selected.items()):
            yield {"sample_id": sid, "label": label, "source": c.source, "method": c.method,
                   "confidence": float(c.confidence)}  # fmt: skip


def _evidence_rows(ev: _Evidence, selected: set[int]) -> Iterator[dict[str, Any]]:
    for sid in sorted(ev.by_sample):
        for c in sorted(ev.by_sample[sid], key=lambda c: (c.label, c.source, c.method, c.detail)):
            yield {"sample_id": c.sample_id, "label": c.label, "source": c.source,
                   "method": c.method, "confidence": float(c.confidence), "passed": c.passed,
                   "selected": id(c) in selected, "detail": c.detail}  # fmt: skip


def _sample_rows(
    ids: list[str], decisions: dict[str, Decision], queue: Sequence[review.QueueItem]
) -> Iterator[dict[str, Any]]:
    queued = {q.sample_id: (rank, q.reason) for rank, q in enumerate(queue, 1)}
    for sid in ids:
        d = decisions[sid]
        rank, reason = queued.get(sid, (None, None))
        yield {
            "sample_id": sid,
            "decided_by": d.decided_by,
            "labels": d.labels,
            "n_labels": len(d.selected),
            "review_rank": rank,
            "review_reason": reason,
        }


def _metrics(
    params: LabelParams,
    vocab: Vocabulary,
    ev: _Evidence,
    decisions: dict[str, Decision],
    methods: dict[str, dict[str, Any]],
    files: dict[str, Any],
    file_answers: dict[str, Any] | None,
    queue: Sequence[review.QueueItem],
) -> dict[str, Any]:
    per_label: Counter[str] = Counter()
    per_source: Counter[str] = Counter()
    per_method: Counter[str] = Counter()
    for d in decisions.values():
        for label, c in d.selected.items():
            per_label[label] += 1
            per_source[c.source] += 1
            per_method[c.method] += 1
    candidates: Counter[str] = Counter(c.method for cs in ev.by_sample.values() for c in cs)
    passed: Counter[str] = Counter(c.method for cs in ev.by_sample.values() for c in cs if c.passed)
    decided = Counter(d.decided_by for d in decisions.values())
    n = len(decisions)
    unlabelled = sum(1 for d in decisions.values() if not d.selected)
    for origin, counts in sorted(ev.unknown.items()):
        shown = ", ".join(f"{k} ({v})" for k, v in counts.most_common(_SHOWN_UNKNOWN))
        log.warning("label: %d unknown label(s) from %s, not in the vocabulary: %s",
                    sum(counts.values()), origin, shown)  # fmt: skip
    ran = {m: ev.kept[m] for m in params.auto_methods if methods[m].get("run")}
    return {
        "stage": STAGE,
        "samples": n,
        "labelled": n - unlabelled,
        "unlabelled": unlabelled,
        "labels": sum(per_label.values()),
        "decided_by": {k: decided.get(k, 0) for k in ("reviewed", "manual", "auto", "none")},
        "per_label": {label: per_label.get(label, 0) for label in vocab.labels},
        "per_source": {k: per_source.get(k, 0) for k in ("reviewed", "manual", "auto")},
        "per_method": dict(sorted(per_method.items())),
        "candidates_per_method": dict(sorted(candidates.items())),
        "passed_per_method": dict(sorted(passed.items())),
        "methods": methods,
        "combine": params.combine,
        "agreement": agreement(ran, ev.applicable, vocab.labels),
        "unknown_labels": {o: dict(sorted(c.items())) for o, c in sorted(ev.unknown.items())},
        "vocabulary": {"size": len(vocab), "from_sources": params.from_sources},
        "manual": files,
        "review": {
            "queue": len(queue),
            "size": params.review.size,
            "by_reason": dict(sorted(Counter(q.reason for q in queue).items())),
            "answers": file_answers,
        },
    }


__all__ = [
    "KeywordParams",
    "LabelParams",
    "ManualFile",
    "ReviewParams",
    "ZeroShotParams",
    "cli_main",
    "run",
]
