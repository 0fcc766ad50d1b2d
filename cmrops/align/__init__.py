"""Image-text alignment inside the pipeline: a shared space without a CLIP download.

The default encoders (EfficientNet-Lite0 images, MiniLM text) embed into different spaces. An
:class:`Alignment` maps both into one L2-normalised space: two small heads trained with a
symmetric InfoNCE loss on the data set's own pairs (:func:`fit_alignment`, ``kind ==
"learned"``); the identity when one aligned dual encoder (CLIP, SigLIP) embedded both sides
(:func:`encoder_alignment`, ``kind == "encoder"``); the concept bridge through the image
encoder's ImageNet classes, which needs no pair (:mod:`~cmrops.align.concept`, ``kind ==
"concept"``); or that bridge fused with learned heads (:mod:`~cmrops.align.fusion`, ``kind ==
"fused"``). The clean stage's mismatch rule, zero-shot labels and search score pairs through it.

* :mod:`~cmrops.align.params` - :class:`AlignParams`;
* :mod:`~cmrops.align.model` - :class:`Alignment`, :func:`encoder_alignment` (numpy inference);
* :mod:`~cmrops.align.train` - :func:`fit_alignment` (torch, CPU, deterministic);
* :mod:`~cmrops.align.concept` - the zero-pair concept bridge (ConSE);
* :mod:`~cmrops.align.fusion` - a prior and learned heads fused, the weight chosen held out;
* :mod:`~cmrops.align.crossfit` - out-of-fold models, :func:`~cmrops.align.crossfit.fit_fused`;
* :mod:`~cmrops.align.metrics` - AUROC, swapped captions, R@1, the threshold calibration;
* :mod:`~cmrops.align.store` - :func:`load_alignment`, safetensors + ``config.json``.
"""

from __future__ import annotations

from cmrops.align.metrics import auroc, calibrate_threshold, derangement, swapped_caption_auroc
from cmrops.align.model import Alignment, encoder_alignment
from cmrops.align.params import AlignParams
from cmrops.align.store import AlignmentError, load_alignment
from cmrops.align.train import fit_alignment

__all__ = [
    "AlignParams",
    "Alignment",
    "AlignmentError",
    "auroc",
    "calibrate_threshold",
    "derangement",
    "encoder_alignment",
    "fit_alignment",
    "load_alignment",
    "swapped_caption_auroc",
]
