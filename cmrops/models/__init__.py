"""Cross-modal hashing models: the network (:mod:`.hasher`), the objectives (:mod:`.losses`),
the training loop (:mod:`.loop`), checkpoints (:mod:`.checkpoint`) and validation mAP
(:mod:`.ranking`). Importing this package imports torch."""

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
