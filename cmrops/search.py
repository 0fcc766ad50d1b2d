"""Search the trained codes: a typed caption or a stored image in, the top ``k`` of the other
modality out, exactly as a deployed index would answer.

Everything is read from a project folder (the one ``dvc.yaml`` lives in) after ``train``:

* ``data/codes/<method>-<bits>/`` - ``meta.json`` and the packed ``uint64`` codes of the query and
  database samples (``{image,text}_{query,database}.npy``); ``data/codes/rows.parquet`` - the
  sample of each code row;
* ``models/<method>-<bits>/`` - the checkpoint, loaded by :func:`cmrops.models.checkpoint.load`
  (safetensors and JSON only: nothing is unpickled; every file's hash is checked);
* ``data/codes/aligned-float/`` and ``models/aligned-float/`` - the aligned float baseline
  (:mod:`cmrops.align.baseline`): float vectors of both modalities in one shared space and the
  alignment that put them there, searched by cosine similarity (``kind == "float"``);
* ``data/interim/features/meta.json`` - the text encoder preprocess used (a tiny run may use
  another encoder than params.yaml names: the one the run *recorded* is the one loaded);
* ``data/clean/samples.parquet`` - captions, media file paths (under ``data/raw/``) and the
  data set's ``media`` (image, video or audio);
* ``data/labelled/labels.parquet`` and ``vocabulary.json`` - labels, for relevance.

**Queries.** A caption is normalised as preprocess normalises captions
(:func:`cmrops.text.normalize_caption`), embedded by the recorded text encoder (L2-normalised,
as preprocess does; one caption is its own mean), passed through the model's text head and
packed (``output > 0``): the same path the stored text codes took. A model that fine-tunes a
dual encoder (``train.finetune_encoder``) takes the caption's tokens instead, as training
tokenised each sample's first caption. It searches the database *image* codes. For the aligned
float baseline the embedding goes through the alignment's text head instead (the path the
stored text vectors took) and the database image vectors are ranked by cosine similarity,
exactly, ties by the lower row. An image query
is a query-set sample: its stored image code searches the database *text* codes (no image is
re-encoded; the page offers the held-out query samples, so a result is never the query's own
pair). Results come from :class:`cmrops.HammingIndex`: exact, sorted by
(distance, database row).

**Video and audio.** In a video-text or audio-text data set the codes' "image" side is that
media (train writes ``image_*.npy`` for it, as for images), so the same two searches run: a
caption searches the database videos or clips, a query video or clip searches the captions.
:attr:`SearchResult.direction` keeps the code's names (``text_to_image``);
:attr:`SearchResult.direction_name` names the media (``text_to_video``), as evaluate's metrics do.

**Relevance** follows the evaluate stage by default (``rule="any"``): a result is relevant when
it shares at least one label with the query (labels below ``min_confidence`` ignored) - generous
for a multi-label query ("two red circles" is matched by anything red *or* circular). The
stricter ``rule="all"`` asks for every query label. An image query's labels are its labels
in ``labels.parquet``. A typed caption has no stored labels, so its labels are the vocabulary
labels the caption-keyword labeller (:class:`cmrops.labels.KeywordMatcher`, with the vocabulary's
terms and synonyms) finds in it; when it names none - or the query sample has no label, or the
run has no labels at all - relevance is **unknown** (``None``), never guessed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cmrops import io
from cmrops.labels.keywords import KeywordMatcher
from cmrops.labels.vocab import Vocabulary
from cmrops.media import MEDIA_KINDS

if TYPE_CHECKING:
    from torch import nn

    from cmrops._core import HammingIndex
    from cmrops.encoders import TextEncoder

__all__ = [
    "RULES",
    "CaptionEncoder",
    "Catalog",
    "ModelCodes",
    "ModelInfo",
    "RelevanceRule",
    "SearchError",
    "SearchHit",
    "SearchResult",
    "SearchSettings",
    "available_models",
    "find_model",
    "load_model",
    "read_config",
    "search_caption",
    "search_image",
]

CODES_DIR = "data/codes"
RAW_DIR = "data/raw"
CLEAN_SAMPLES = "data/clean/samples.parquet"
LABELLED_DIR = "data/labelled"
FEATURES_META = "data/interim/features/meta.json"

Direction = Literal["text_to_image", "image_to_text"]


class SearchError(ValueError):
    """The project cannot answer this search; the message says what to run or pick instead."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SearchSettings:
    """What the query path must share with the run's stages (from its params; defaults match
    params.yaml's)."""

    caption_max_chars: int = 1000  # preprocess.caption_max_chars
    keyword_plurals: bool = True  # label.keyword.plurals
    min_confidence: float = 0.0  # evaluate.min_confidence
    device: str = "cpu"  # where the text encoder and the head run for a typed caption

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SearchSettings:
        """Settings from a parsed params.yaml (missing sections or keys keep the defaults)."""

        def get(section: str, *keys: str) -> Any:
            node: Any = params.get(section) or {}
            for key in keys:
                node = node.get(key) if isinstance(node, Mapping) else None
            return node

        d = cls()
        max_chars = get("preprocess", "caption_max_chars")
        plurals = get("label", "keyword", "plurals")
        min_conf = get("evaluate", "min_confidence")
        return cls(
            caption_max_chars=d.caption_max_chars if max_chars is None else int(max_chars),
            keyword_plurals=d.keyword_plurals if plurals is None else bool(plurals),
            min_confidence=d.min_confidence if min_conf is None else float(min_conf),
        )


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelInfo:
    """One trained model with codes: ``data/codes/<name>/`` and ``models/<name>/``."""

    name: str  # "<method>-<bits>"
    method: str
    bits: int
    codes_dir: Path
    model_dir: Path
    n_query: int
    n_database: int
    kind: Literal["hash", "float"] = "hash"  # float: the aligned float baseline (cosine)
    dim: int | None = None  # the float vectors' width (kind float)

    @property
    def label(self) -> str:
        """How a person would name the model: ``dcmh-64``, ``aligned-float (cosine, 128-d)``."""
        return self.name if self.kind == "hash" else f"{self.name} (cosine, {self.dim}-d)"


def available_models(project: str | os.PathLike[str]) -> list[ModelInfo]:
    """The models whose codes the train stage wrote, sorted by (method, bits), and the aligned
    float baseline (``kind == "float"``, ``bits`` 0) when train wrote it; ``[]`` before
    training (an empty state, not an error)."""
    root = Path(project)
    codes = root / CODES_DIR
    if not codes.is_dir():
        return []
    out = []
    for d in sorted(p for p in codes.iterdir() if p.is_dir()):
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
            if meta.get("stage") != "train":
                continue
            if meta.get("kind") == "float_baseline":
                out.append(_float_info(root, d, meta))
                continue
            out.append(
                ModelInfo(
                    name=d.name,
                    method=str(meta["method"]),
                    bits=int(meta["bits"]),
                    codes_dir=d,
                    model_dir=root / str(meta.get("model_dir") or f"models/{d.name}"),
                    n_query=int(meta["n_query"]),
                    n_database=int(meta["n_database"]),
                )
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a finished model's codes (a partial copy): not offered
    return sorted(out, key=lambda m: (m.method, m.bits))


def _float_info(root: Path, d: Path, meta: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        name=d.name,
        method=str(meta.get("method") or d.name),
        bits=0,
        codes_dir=d,
        model_dir=root / str(meta.get("model_dir") or f"models/{d.name}"),
        n_query=int(meta["n_query"]),
        n_database=int(meta["n_database"]),
        kind="float",
        dim=int(meta["alignment"]["dim"]),
    )


class CosineIndex:
    """Exact cosine kNN over L2-normalised float32 rows: the float counterpart of
    :class:`cmrops.HammingIndex` (one matrix product; ties broken by the lower row)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.ascontiguousarray(vectors, np.float32)

    def __len__(self) -> int:
        return len(self.vectors)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(similarities float32 (n, k), rows int64 (n, k))``, best first."""
        sims = np.asarray(query, np.float32) @ self.vectors.T
        k = min(k, len(self.vectors))
        rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, rows, axis=1), rows.astype(np.int64)


def find_model(project: str | os.PathLike[str], name: str) -> ModelInfo:
    """The model called ``name`` (``<method>-<bits>``), or :class:`SearchError` listing those
    there are."""
    models = available_models(project)
    for m in models:
        if m.name == name:
            return m
    have = ", ".join(m.name for m in models) or "none - run `cmrops train` first"
    raise SearchError(f"{Path(project) / CODES_DIR}: no codes for model {name!r} (have: {have})")


@dataclass
class ModelCodes:
    """A model's stored codes with one Hamming index per database modality."""

    info: ModelInfo
    image_query: np.ndarray  # (n_query, words) uint64; kind float: (n_query, dim) float32
    text_query: np.ndarray
    image_index: HammingIndex | CosineIndex  # database images (what a caption searches)
    text_index: HammingIndex | CosineIndex  # database texts (what an image searches)

    @classmethod
    def load(cls, info: ModelInfo) -> ModelCodes:
        """The codes (or, for the aligned float baseline, the float vectors) of ``info``,
        checked against its ``meta.json``; :class:`SearchError` says what to re-run."""
        from cmrops._core import HammingIndex

        floats = info.kind == "float"
        suffix, dtype, width, what = (
            ("_float", np.float32, info.dim, "vectors")
            if floats
            else ("", np.uint64, (info.bits + 63) // 64, "codes")
        )
        arrays = {}
        for kind in ("image", "text"):
            for role, n in (("query", info.n_query), ("database", info.n_database)):
                path = info.codes_dir / f"{kind}_{role}{suffix}.npy"
                if not path.is_file():
                    raise SearchError(f"{path}: missing - re-run `cmrops train`")
                a = io.read_npy(path)
                if a.dtype != dtype or a.shape != (n, width):
                    raise SearchError(
                        f"{path}: {a.dtype} {a.shape}, expected {np.dtype(dtype)} ({n}, {width}) "
                        f"per meta.json - the {what} are stale or damaged; re-run `cmrops train`"
                    )
                if floats and not np.isfinite(a).all():
                    raise SearchError(f"{path}: non-finite values - re-run `cmrops train`")
                arrays[f"{kind}_{role}"] = np.ascontiguousarray(a)
        if info.n_database < 1:
            raise SearchError(f"{info.codes_dir}: the database is empty; nothing to search")
        index = CosineIndex if floats else HammingIndex
        return cls(
            info,
            arrays["image_query"],
            arrays["text_query"],
            index(arrays["image_database"]),
            index(arrays["text_database"]),
        )


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Catalog:
    """The samples behind the code rows: captions, media files and labels."""

    query_ids: tuple[str, ...]  # row i of the query codes
    database_ids: tuple[str, ...]  # row i of the database codes
    captions: Mapping[str, tuple[str, ...]]  # normalised captions
    image_paths: Mapping[str, Path]  # absolute paths of the media files (images, videos, clips)
    labels: Mapping[str, frozenset[str]]  # labels with confidence >= min_confidence
    matcher: KeywordMatcher | None  # None: the run has no vocabulary (no labels)
    has_labels: bool
    media: str = "image"  # what the "image" side is: image, video or audio

    @classmethod
    def load(cls, project: str | os.PathLike[str], settings: SearchSettings) -> Catalog:
        root = Path(project)
        rows_path = root / CODES_DIR / "rows.parquet"
        if not rows_path.is_file():
            raise SearchError(f"{rows_path}: not found - run `cmrops train` first")
        rows = io.read_parquet(rows_path).to_pydict()
        by_role: dict[str, list[tuple[int, str]]] = {"query": [], "database": []}
        for role, row, sid in zip(rows["role"], rows["row"], rows["sample_id"], strict=True):
            by_role.setdefault(role, []).append((int(row), str(sid)))
        ids = {role: tuple(s for _, s in sorted(pairs)) for role, pairs in by_role.items()}

        samples_path = root / CLEAN_SAMPLES
        if not samples_path.is_file():
            raise SearchError(f"{samples_path}: not found - run `cmrops clean` (or dvc pull)")
        import pyarrow.parquet as pq

        cols = ["sample_id", "image_path", "captions_norm"]
        has_media = "media" in pq.read_schema(samples_path).names  # absent: written before video
        t = io.read_parquet(samples_path, [*cols, "media"] if has_media else cols)
        media = _media(samples_path, t["media"] if has_media else None)
        t = t.select(cols)
        captions: dict[str, tuple[str, ...]] = {}
        images: dict[str, Path] = {}
        for sid, path, caps in zip(*(t[c].to_pylist() for c in t.column_names), strict=True):
            captions[sid] = tuple(caps or ())
            if path:
                images[sid] = root / RAW_DIR / path
        missing = [s for s in (*ids["query"], *ids["database"]) if s not in captions]
        if missing:
            raise SearchError(
                f"{rows_path}: {len(missing)} coded sample(s) are not in {samples_path} (e.g. "
                f"{missing[0]}): the codes are stale - re-run `cmrops train`"
            )
        labels, matcher = _labels(root / LABELLED_DIR, settings)
        return cls(
            query_ids=ids["query"],
            database_ids=ids["database"],
            captions=captions,
            image_paths=images,
            labels=labels,
            matcher=matcher,
            has_labels=bool(labels),
            media=media,
        )

    def caption_of(self, sample_id: str) -> str:
        caps = self.captions.get(sample_id, ())
        return caps[0] if caps else ""


def _media(path: Path, column: Any) -> str:
    """The one media of a sample table's ``media`` column (null or absent: image)."""
    kinds = set() if column is None else {m for m in column.to_pylist() if m is not None}
    if not kinds:
        return "image"
    if len(kinds) > 1 or not kinds <= set(MEDIA_KINDS):
        raise SearchError(
            f"{path}: media {', '.join(sorted(map(str, kinds)))}; expected one of "
            f"{', '.join(MEDIA_KINDS)} (one kind per data set) - re-run the pipeline"
        )
    return kinds.pop()


def _labels(
    labelled: Path, settings: SearchSettings
) -> tuple[dict[str, frozenset[str]], KeywordMatcher | None]:
    path = labelled / "labels.parquet"
    per: dict[str, set[str]] = {}
    if path.is_file():
        t = io.read_parquet(path).to_pydict()
        conf = t.get("confidence")
        for i, (sid, label) in enumerate(zip(t["sample_id"], t["label"], strict=True)):
            if label is None or (conf is not None and (conf[i] or 0.0) < settings.min_confidence):
                continue
            per.setdefault(sid, set()).add(label)
    matcher = None
    vocab_path = labelled / "vocabulary.json"
    if vocab_path.is_file():
        try:
            v = json.loads(vocab_path.read_text(encoding="utf-8"))
            labels = tuple(v["labels"])
            terms = {k: tuple(t) for k, t in (v.get("terms") or {}).items()}
        except (ValueError, KeyError, TypeError) as e:
            raise SearchError(f"{vocab_path}: not a vocabulary ({e}); re-run `cmrops label`") from e
        if labels:
            matcher = KeywordMatcher(Vocabulary(labels, terms), plurals=settings.keyword_plurals)
    return {s: frozenset(v) for s, v in per.items()}, matcher


# --------------------------------------------------------------------------- caption encoder


class CaptionEncoder:
    """A typed caption → the packed code the model's text tower gives it (see module docstring).

    Heads on embeddings: the caption is embedded by the text encoder preprocess recorded, then
    the text head runs. A fine-tuned dual encoder (``train.finetune_encoder``): the caption is
    tokenised for its text tower, as the train stage tokenised the first caption of each sample.
    """

    def __init__(self, project: str | os.PathLike[str], info: ModelInfo, settings: SearchSettings):
        from cmrops.encoders import ModelNotFoundError

        try:
            self._load(Path(project), info, settings)
        except ModelNotFoundError as e:  # the encoder's files are not on this machine
            raise SearchError(f"{e} - or query by a stored sample (no encoder needed)") from e

    def _load(self, project: Path, info: ModelInfo, settings: SearchSettings) -> None:
        self.info = info
        self.settings = settings
        self.alignment = None
        if info.kind == "float":
            self._load_alignment(project, info, settings)
            return
        config = read_config(info)
        finetuned = config["model"].get("encoder")
        if finetuned:
            from cmrops.models.finetune import encoder_dir

            self.encoder_name = str(finetuned)
            self.model = load_model(info, config)
            self._tokenizer_dir: Path | None = encoder_dir(self.encoder_name)
            self.text_encoder: TextEncoder | None = None
            return
        from cmrops.encoders import load_text_encoder

        self.encoder_name = _recorded_text_encoder(project)
        self.model = load_model(info, config)
        self._tokenizer_dir = None
        self.text_encoder = load_text_encoder(self.encoder_name, settings.device)
        want = self.model.config.text_dim
        if self.text_encoder.dim != want:
            raise SearchError(
                f"{info.model_dir}: the text head takes {want}-d embeddings but the recorded "
                f"encoder {self.encoder_name!r} gives {self.text_encoder.dim}-d ones - the "
                "model and the features come from different runs; re-run `cmrops train`"
            )

    def _load_alignment(self, project: Path, info: ModelInfo, settings: SearchSettings) -> None:
        from cmrops.align import AlignmentError, load_alignment
        from cmrops.encoders import load_text_encoder

        try:
            self.alignment = load_alignment(info.model_dir)
        except AlignmentError as e:
            raise SearchError(str(e)) from e
        self.encoder_name = _recorded_text_encoder(project)
        self._tokenizer_dir = None
        self.text_encoder = load_text_encoder(self.encoder_name, settings.device)
        want = self.alignment.heads["text"].in_dim
        if self.text_encoder.dim != want:
            raise SearchError(
                f"{info.model_dir}: the alignment takes {want}-d text embeddings but the "
                f"recorded encoder {self.encoder_name!r} gives {self.text_encoder.dim}-d ones - "
                "they come from different runs; re-run `cmrops train`"
            )

    def normalise(self, caption: str) -> str:
        """The caption as preprocess normalises it; :class:`SearchError` when nothing is left."""
        from cmrops.text import normalize_caption

        text, _cut = normalize_caption(caption, self.settings.caption_max_chars)
        if not text:
            raise SearchError("the caption is empty after normalisation: type some words")
        return text

    def text_input(self, caption: str) -> np.ndarray:
        """What the text tower takes for ``caption``: its ``(1, dim)`` float32 embedding as
        preprocess computes it, or, for a fine-tuned encoder, its ``(1, 2, length)`` tokens."""
        text = self.normalise(caption)
        if self._tokenizer_dir is not None:
            from cmrops.models.finetune import tokenize_captions

            return tokenize_captions(self._tokenizer_dir, [text])
        assert self.text_encoder is not None
        return self.text_encoder.encode([text], progress=False)

    def head(self, inputs: np.ndarray) -> np.ndarray:
        """The text tower's continuous outputs ``(n, bits)`` for :meth:`text_input` rows (the
        aligned float baseline: ``(n, dim)`` unit vectors of the alignment's text head)."""
        if self.alignment is not None:
            return self.alignment.text(inputs)
        import torch

        x = np.ascontiguousarray(inputs)
        if x.dtype.kind == "f":
            x = x.astype(np.float32, copy=False)
        with torch.inference_mode():
            out = self.model.text(torch.from_numpy(x).to(self.settings.device))
            return out.float().cpu().numpy()

    def encode(self, caption: str) -> np.ndarray:
        """The packed ``(1, words)`` uint64 code of ``caption`` (the aligned float baseline: its
        ``(1, dim)`` float32 unit vector)."""
        from cmrops.codes import pack_bits

        out = self.head(self.text_input(caption))
        return out.astype(np.float32) if self.alignment is not None else pack_bits(out > 0)


def _recorded_text_encoder(project: Path) -> str:
    path = project / FEATURES_META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        name = meta["text"]["encoder"]
    except FileNotFoundError:
        raise SearchError(
            f"{path}: not found - a caption search needs the text encoder preprocess used; run "
            "`cmrops preprocess` (or `dvc pull data/interim`), or query by a stored sample"
        ) from None
    except (ValueError, KeyError, TypeError) as e:
        raise SearchError(f"{path}: no text encoder recorded ({e}); re-run preprocess") from e
    if not isinstance(name, str) or not name:
        raise SearchError(f"{path}: no text encoder recorded; re-run `cmrops preprocess`")
    return name


def read_config(info: ModelInfo) -> dict[str, Any]:
    """The checkpoint's ``config.json`` (what was trained); :class:`SearchError` when absent."""
    path = info.model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SearchError(f"{path}: not found - run `cmrops train` (or dvc pull)") from None
    except ValueError as e:
        raise SearchError(f"{path}: not valid JSON ({e}) - re-run `cmrops train`") from e
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise SearchError(f"{path}: not a cmrops model config - re-run `cmrops train`")
    return config


def load_model(info: ModelInfo, config: dict[str, Any] | None = None) -> nn.Module:
    """The trained model of ``info`` in eval mode - heads on embeddings, or heads on a
    fine-tuned encoder - from its checkpoint (hash-checked, no pickle); :class:`SearchError`
    says what is wrong."""
    from cmrops.models import checkpoint as ckpt
    from cmrops.models.finetune import model_from_config

    d = info.model_dir
    config = config if config is not None else read_config(info)
    try:
        model = model_from_config(config["model"])
        state, _best = ckpt.load(d, config, model)
    except ckpt.CheckpointError as e:
        raise SearchError(f"{e} - re-run `cmrops train`") from e
    except (TypeError, ValueError, KeyError, OSError) as e:
        raise SearchError(f"{d}: cannot rebuild model {info.name} ({e})") from e
    if not state.get("done"):
        raise SearchError(
            f"{d}: training has not finished (step {state.get('step')}): the weights are not "
            "the selected ones - finish `cmrops train` first"
        )
    return model.eval()


# --------------------------------------------------------------------------- search


@dataclass(frozen=True)
class SearchHit:
    """One result: a database sample and how far its code is from the query's."""

    rank: int  # 1-based
    sample_id: str
    caption: str  # the sample's first normalised caption
    image_path: Path | None  # its media file (an image, a video or an audio clip)
    distance: int | None  # Hamming distance in bits (None: a float model)
    labels: frozenset[str]
    relevant: bool | None  # None: unknown (the query has no labels)
    similarity: float | None = None  # cosine similarity (a float model; None: Hamming)

    @property
    def score(self) -> str:
        """The result's nearness as shown: ``distance **3**`` or ``cosine **0.812**``."""
        if self.similarity is not None:
            return f"cosine **{self.similarity:.3f}**"
        return f"distance **{self.distance}**"


@dataclass(frozen=True)
class SearchResult:
    model: str
    direction: Direction
    query: str  # the normalised caption, or the query sample's id
    query_labels: frozenset[str] | None  # None: unknown
    relevance: str  # how relevance was decided, in words
    hits: tuple[SearchHit, ...]
    media: str = "image"  # what the "image" side is (Catalog.media)
    rule: str = "any"  # the relevance rule (RULES)

    @property
    def direction_name(self) -> str:
        """The direction named by the media, as evaluate names it: ``text_to_video``."""
        return self.direction.replace("image", self.media)

    @property
    def n_relevant(self) -> int | None:
        if self.query_labels is None:
            return None
        return sum(bool(h.relevant) for h in self.hits)


#: How a result's labels must meet the query's to count as relevant.
RelevanceRule = Literal["any", "all"]
RULES: dict[str, str] = {
    "any": "shares at least one label with the query (evaluate's rule)",
    "all": "has every label of the query",
}


def search_caption(
    codes: ModelCodes,
    encoder: CaptionEncoder,
    catalog: Catalog,
    caption: str,
    k: int,
    rule: RelevanceRule = "any",
) -> SearchResult:
    """Top ``k`` database images (videos, clips) for a typed caption (text → image);
    relevance by ``rule`` (:data:`RULES`)."""
    if encoder.info.name != codes.info.name:
        raise ValueError(f"encoder of {encoder.info.name} used with codes of {codes.info.name}")
    text = encoder.normalise(caption)
    query = encoder.encode(text)
    if catalog.matcher is None:
        found: frozenset[str] | None = None
        why = "unknown: this run has no label vocabulary"
    else:
        found = frozenset(catalog.matcher.labels_in(text))
        why = (
            "labels the keyword labeller finds in the caption: " + ", ".join(sorted(found))
            if found
            else "unknown: the caption names no vocabulary label"
        )
        found = found or None
    hits = _hits(codes.image_index, query, k, catalog, found, rule)
    return SearchResult(codes.info.name, "text_to_image", text, found, why, hits, catalog.media,
                        rule)  # fmt: skip


def search_image(
    codes: ModelCodes, catalog: Catalog, sample_id: str, k: int, rule: RelevanceRule = "any"
) -> SearchResult:
    """Top ``k`` database captions for a query-set sample's stored image (video, clip) code
    (image → text); relevance by ``rule`` (:data:`RULES`)."""
    try:
        row = catalog.query_ids.index(sample_id)
    except ValueError:
        raise SearchError(
            f"{sample_id!r} is not a query sample of {codes.info.name}; pick one of the "
            f"{len(catalog.query_ids)} query samples"
        ) from None
    labels = catalog.labels.get(sample_id)
    if labels:
        why = "labels of the query sample: " + ", ".join(sorted(labels))
    else:
        why = "unknown: the query sample has no label"
        labels = None
    query = codes.image_query[row : row + 1]
    hits = _hits(codes.text_index, query, k, catalog, labels, rule)
    return SearchResult(
        codes.info.name, "image_to_text", sample_id, labels, why, hits, catalog.media, rule
    )


def _hits(
    index: HammingIndex | CosineIndex,
    query: np.ndarray,
    k: int,
    catalog: Catalog,
    query_labels: frozenset[str] | None,
    rule: RelevanceRule = "any",
) -> tuple[SearchHit, ...]:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    n = len(catalog.database_ids)
    if not 1 <= k <= n:
        raise SearchError(f"k must be between 1 and the database size {n}, got {k}")
    cosine = isinstance(index, CosineIndex)
    dtype = np.float32 if cosine else np.uint64
    dist, rows = index.search(np.ascontiguousarray(query, dtype), k=k)
    out = []
    for rank, (d, r) in enumerate(zip(dist[0].tolist(), rows[0].tolist(), strict=True), 1):
        sid = catalog.database_ids[r]
        labels = catalog.labels.get(sid, frozenset())
        if query_labels is None:
            relevant = None
        elif rule == "all":
            relevant = query_labels <= labels
        else:
            relevant = bool(labels & query_labels)
        out.append(
            SearchHit(
                rank=rank,
                sample_id=sid,
                caption=catalog.caption_of(sid),
                image_path=catalog.image_paths.get(sid),
                distance=None if cosine else int(d),
                labels=labels,
                relevant=relevant,
                similarity=round(float(d), 6) if cosine else None,
            )
        )
    return tuple(out)
