"""Cross-modal hashing models: the network (:mod:`.hasher`), the objectives (:mod:`.losses`,
:mod:`.djsrh`), the training loop (:mod:`.loop`, the single ``fit`` of every method), the
closed-form methods (:mod:`.closed_form` over :mod:`.itq`, :mod:`.cca`, :mod:`.cmfh`, as
:mod:`.linear` projections), checkpoints (:mod:`.checkpoint`) and validation mAP
(:mod:`.ranking`). The method catalogue is :mod:`cmrops.methods`. Importing this package
imports torch."""

from __future__ import annotations

from cmrops.models.checkpoint import CheckpointError
from cmrops.models.hasher import CrossModalHasher, HasherConfig, HashHead
from cmrops.models.loop import METHODS, PairedData, TrainConfig, TrainResult, encode, fit

__all__ = [
    "METHODS",
    "CheckpointError",
    "CrossModalHasher",
    "HashHead",
    "HasherConfig",
    "PairedData",
    "TrainConfig",
    "TrainResult",
    "encode",
    "fit",
]
