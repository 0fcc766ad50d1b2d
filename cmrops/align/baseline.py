"""The aligned float baseline: what retrieval in a shared float space achieves before hashing.

The train stage calls :func:`write_float_baseline` beside the hashing models. It fits an
:class:`~cmrops.align.Alignment` on the **training pairs only** (the query and database samples
are never seen: the align stage's model, trained on every pair for the clean stage, would leak
the query set into the baseline) - or takes the identity when one aligned dual encoder (a
CLIP / SigLIP) embedded both sides - and writes, under ``<codes>/aligned-float/``:

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
    kind: Literal["learned", "encoder"],
    params: AlignParams,
    *,
    progress: bool = True,
) -> tuple[Alignment, bool]:
    """The alignment of the training pairs ``(image[i], text[i])`` and whether it was reused."""
    if kind == "encoder":
        if image.shape[1] != text.shape[1]:
            raise ValueError(
                f"align.kind: encoder, but image features are {image.shape[1]}-d and text "
                f"features {text.shape[1]}-d; use align.kind: learned or auto"
            )
        return encoder_alignment(image.shape[1]), False
    if len(image) < MIN_PAIRS:
        raise ValueError(
            f"{len(image)} training pairs: the aligned float baseline needs at least {MIN_PAIRS} "
            "(or set train.float_baseline: false)"
        )
    fingerprint = data_fingerprint(np.asarray(image, np.float32), np.asarray(text, np.float32))
    try:
        old = load_alignment(model_dir)
        if (
            old.kind == "learned"
            and old.info.get("data_sha256") == fingerprint
            and old.info.get("params") == params.to_dict()
        ):
            return old, True
    except AlignmentError:
        pass  # none yet, or of other data: fit
    alignment, _metrics = fit_alignment(image, text, params, progress=progress)
    return alignment, False


def write_float_baseline(
    codes: Path,
    models: Path,
    train: tuple[np.ndarray, np.ndarray],
    query: tuple[np.ndarray, np.ndarray],
    database: tuple[np.ndarray, np.ndarray],
    *,
    kind: Literal["learned", "encoder"],
    why: str,
    params: AlignParams,
    meta: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any]:
    """Fit (or reuse) the baseline's alignment on ``train`` (image, text) and write the shared
    space vectors of ``query`` and ``database`` (see module docstring); returns its summary.
    ``meta`` (protocol, split seed, set sizes) goes into ``meta.json`` as given."""
    model_dir = models / NAME
    alignment, reused = fit_or_reuse(model_dir, *train, kind, params, progress=progress)
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
