"""Zero-shot labels from an aligned image-text encoder (CLIP, SigLIP, ...).

Each label is embedded as the mean of its prompt embeddings (``"a photo of a {label}."``, ...)
from the *same* text encoder that embedded the captions, L2-renormalised. An image's cosine
similarity to every label is turned into a confidence with a temperature softmax over the
vocabulary (``softmax(sim / T)``; CLIP's logit scale of 100 is ``T = 0.01``). The ``top_k``
labels of each image are candidates; a candidate passes when its confidence reaches the
threshold (and its similarity ``min_similarity``, when set).

This only means something when the image and text embeddings share one space. Whether the
encoders already do is read from ``features/meta.json`` (:func:`alignment`); when they do not, the
label stage maps the images and the label embeddings through the align stage's learned
alignment (:mod:`cmrops.stages.align`, :mod:`cmrops.align`) before :func:`scores`, and reports
zero-shot as not run only when there is no alignment either.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: ``texts -> (len(texts), dim)`` float embeddings from the text encoder of the features.
PromptEmbedder = Callable[[list[str]], np.ndarray]


def alignment(meta: Mapping[str, Any] | None) -> tuple[bool, str]:
    """Whether ``features/meta.json`` describes an aligned dual encoder, and why (or why not).

    An explicit ``"aligned": true/false`` wins. Without it, the encoders are aligned when the
    image and the text side name the same model (one dual-encoder checkpoint embedded both):
    a text-only model cannot embed images, so the same name on both sides means one CLIP-like
    model. The defaults (EfficientNet-Lite0 images, MiniLM text) are not aligned.
    """
    if not meta:
        return False, "no features/meta.json in the interim folder"
    if not meta.get("embeddings", False):
        return False, "preprocess wrote no embeddings (embeddings: false)"
    image = (meta.get("image") or {}).get("encoder")
    text = (meta.get("text") or {}).get("encoder")
    if "aligned" in meta:
        if meta["aligned"]:
            return True, f"features/meta.json says aligned ({image} / {text})"
        return False, f"features/meta.json says the encoders ({image} / {text}) are not aligned"
    if image and image == text:
        return True, f"one dual encoder embedded images and texts ({image})"
    return False, (
        f"image encoder {image!r} and text encoder {text!r} are separate models, not an aligned "
        "dual encoder (configure a CLIP/SigLIP model for both in preprocess)"
    )


def prompt_texts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every template filled with every label, label-major: ``[t0(l0), t1(l0), t0(l1), ...]``."""
    return [t.format(label=label) for label in labels for t in templates]


def label_embeddings(
    labels: Sequence[str], templates: Sequence[str], embed: PromptEmbedder
) -> np.ndarray:
    """``(len(labels), dim)`` float64: each label's mean prompt embedding, L2-normalised."""
    texts = prompt_texts(labels, templates)
    emb = np.asarray(embed(texts), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"prompt embedder returned shape {emb.shape} for {len(texts)} prompts")
    mean = emb.reshape(len(labels), len(templates), -1).mean(axis=1)
    return _normalise(mean)


def scores(
    images: np.ndarray, label_emb: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities ``(n, L)`` and softmax confidences ``(n, L)``, both float64."""
    if images.ndim != 2 or images.shape[1] != label_emb.shape[1]:
        raise ValueError(
            f"image embeddings {images.shape} and label embeddings {label_emb.shape} differ in "
            "dimension: the prompts must be embedded by the text side of the image encoder"
        )
    sims = _normalise(np.asarray(images, dtype=np.float64)) @ label_emb.T
    logits = sims / temperature
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return sims, probs


def encoder_embedder(
    text_encoder: str, device: str = "cpu", batch_size: int = 64
) -> PromptEmbedder:
    """A :data:`PromptEmbedder` that runs ``text_encoder`` through :mod:`cmrops.encoders`."""

    def embed(texts: list[str]) -> np.ndarray:
        from cmrops.encoders import load_text_encoder

        encoder = load_text_encoder(text_encoder, device)
        return encoder.encode(texts, batch_size=batch_size, progress=False)

    return embed


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)
