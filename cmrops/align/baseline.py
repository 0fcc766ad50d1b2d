"""The aligned float baseline: what retrieval in a shared float space achieves before hashing.

The train stage calls :func:`write_float_baseline` beside the hashing models. It fits an
:class:`~cmrops.align.Alignment` of the kind ``align.kind`` resolves to on the **training pairs
only** (the query and database samples are never seen: the align stage's model, trained on every
pair for the clean stage, would leak the query set into the baseline): heads learned on them,
the concept bridge (:mod:`cmrops.align.concept`, centred on the training samples) fused with
such heads (:func:`~cmrops.align.crossfit.fit_fused`, the weight chosen on the heads' own
held-out split), the bridge alone, or the identity when
one aligned dual encoder (a CLIP / SigLIP) embedded both sides - and writes, under
``<codes>/aligned-float/``:

* ``{image,text}_{query,database}_float.npy`` - float32, L2-normalised rows in the shared space,
  rows as ``<codes>/rows.parquet`` (the evaluate stage ranks them by cosine similarity);
* ``meta.json`` - ``kind: float_baseline`` (no packed codes: not a hashing model), the alignment's
  kind, width, training sizes and held-out metrics, protocol, split seed and set sizes;

and the alignment itself under ``<models>/aligned-float/`` (:mod:`cmrops.align.store`), which
caption search uses to put a typed caption in the same space. A rerun on the same training pairs
with the same parameters reloads that model instead of refitting (the fit is deterministic, so
either way the bytes are the same).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmrops import io
from cmrops.align.concept import ConceptParams, build_concept_alignment
from cmrops.align.crossfit import fit_fused
from cmrops.align.model import Alignment, encoder_alignment
from cmrops.align.params import AlignParams
from cmrops.align.store import AlignmentError, load_alignment, save_alignment
from cmrops.align.train import MIN_PAIRS, data_fingerprint, fit_alignment

log = logging.getLogger(__name__)

#: The folder name under ``<codes>`` and ``<models>``; evaluate's ``aligned_baseline`` default.
NAME = "aligned-float"
KIND = "float_baseline"  # meta.json ``kind``


def fit_or_reuse(
    model_dir: Path,
    image: np.ndarray,
    text: np.ndarray,
    kind: Literal["learned", "encoder", "concept", "fused"],
    params: AlignParams,
    *,
    progress: bool = True,
    concept: ConceptParams | None = None,
    encoders: tuple[str, str] | None = None,
) -> tuple[Alignment, bool]:
    """The alignment of the training pairs ``(image[i], text[i])`` and whether it was reused.
    ``concept`` and ``encoders`` (image, text encoder names) build the concept bridge."""
    if kind == "encoder":
        if image.shape[1] != text.shape[1]:
            raise ValueError(
                f"align.kind: encoder, but image features are {image.shape[1]}-d and text "
                f"features {text.shape[1]}-d; use align.kind: learned or auto"
            )
        return encoder_alignment(image.shape[1]), False
    prior = None
    if kind in ("concept", "fused"):
        if encoders is None:
            raise ValueError(f"align.kind: {kind} needs the encoders' names (features/meta.json)")
        prior = build_concept_alignment(
            *encoders, concept or ConceptParams(), image=image, text=text
        )
        if kind == "concept":
            return prior, False
    if len(image) < MIN_PAIRS:
        raise ValueError(
            f"{len(image)} training pairs: the aligned float baseline needs at least {MIN_PAIRS} "
            "(or set train.float_baseline: false, or align.kind: concept)"
        )
    fingerprint = data_fingerprint(np.asarray(image, np.float32), np.asarray(text, np.float32))
    try:
        old = load_alignment(model_dir)
        if (
            old.kind == kind
            and old.info.get("data_sha256") == fingerprint
            and old.info.get("params") == params.to_dict()
            and (prior is None or _same_prior(old, prior))
        ):
            return old, True
    except AlignmentError:
        pass  # none yet, or of other data: fit
    if prior is not None:
        # the weight on the one model's held-out split: one training, not 1 + folds
        fit = fit_fused(image, text, prior, params, progress=progress, cross_fit=False)
        return fit.alignment, False
    alignment, _metrics = fit_alignment(image, text, params, progress=progress)
    return alignment, False


def _same_prior(old: Alignment, prior: Alignment) -> bool:
    parts = old.info.get("parts") or [{}]
    return bool(parts[0].get("concept") == prior.info.get("concept")) and all(
        parts[0].get(k) == prior.info.get(k) for k in ("image_encoder", "text_encoder")
    )


def write_float_baseline(
    codes: Path,
    models: Path,
    train: tuple[np.ndarray, np.ndarray],
    query: tuple[np.ndarray, np.ndarray],
    database: tuple[np.ndarray, np.ndarray],
    *,
    kind: Literal["learned", "encoder", "concept", "fused"],
    why: str,
    params: AlignParams,
    meta: dict[str, Any],
    progress: bool = True,
    concept: ConceptParams | None = None,
    encoders: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Fit (or reuse) the baseline's alignment on ``train`` (image, text) and write the shared
    space vectors of ``query`` and ``database`` (see module docstring); returns its summary.
    ``meta`` (protocol, split seed, set sizes) goes into ``meta.json`` as given."""
    model_dir = models / NAME
    alignment, reused = fit_or_reuse(
        model_dir, *train, kind, params, progress=progress, concept=concept, encoders=encoders
    )
    alignment.info["why"] = why
    alignment.info["fitted_on"] = "training pairs only (never the query or database samples)"
    if not reused:
        shutil.rmtree(model_dir, ignore_errors=True)
        save_alignment(alignment, model_dir)
    out = codes / NAME
    out.mkdir(parents=True, exist_ok=True)
    for role, (image, text) in (("query", query), ("database", database)):
        io.write_npy(out / f"image_{role}_float.npy", alignment.image(image))
        io.write_npy(out / f"text_{role}_float.npy", alignment.text(text))
    summary = {
        "kind": alignment.kind,
        "dim": alignment.dim,
        "why": why,
        "train_pairs": len(train[0]),
    }
    holdout = alignment.info.get("holdout")
    if holdout is not None:
        summary["holdout"] = {
            k: holdout.get(k) for k in ("pairs", "r1_i2t", "r1_t2i", "swapped_auroc", "loss")
        }
    if alignment.kind == "learned":
        summary["params"] = params.to_dict()
        summary["best_epoch"] = alignment.info.get("best_epoch")
    if alignment.kind == "fused":
        summary["params"] = params.to_dict()
        summary["prior_weight"] = alignment.info.get("prior_weight")
    io.write_json(
        out / "meta.json",
        {
            **meta,
            "kind": KIND,
            "method": NAME,
            "model_dir": str(model_dir),
            "alignment": summary,
            "ranking": "cosine similarity of L2-normalised rows in the shared space",
        },
    )
    log.info(
        "aligned float baseline: %s alignment (%d-d) %s on %d training pairs",
        alignment.kind,
        alignment.dim,
        "reused" if reused else "fitted",
        len(train[0]),
    )
    return summary
