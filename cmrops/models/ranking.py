"""Validation retrieval quality during training: tie-aware mAP from Hamming histograms.

The Rust core (:func:`cmrops.hamming_histogram`, through :func:`cmrops.metrics.histograms`)
counts, per query, the database codes at each Hamming distance and the relevant ones among them;
no ranking is materialised and there is no Python loop over queries. AP is the tie-aware value
(the mean over every order of the items that share a distance) of
:func:`cmrops.metrics.average_precision`, the same definition the evaluate stage reports (a
query with no relevant item counts as AP 0).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from cmrops import metrics


def cross_modal_map(
    image_q: NDArray[np.uint64],
    text_q: NDArray[np.uint64],
    image_db: NDArray[np.uint64],
    text_db: NDArray[np.uint64],
    labels_q: NDArray[np.bool_] | None,
    labels_db: NDArray[np.bool_] | None,
) -> dict[str, float]:
    """Image→text and text→image tie-aware mAP (``"i2t"``, ``"t2i"``) and their mean (``"map"``).

    With labels, relevant = sharing a label; without (``None``), relevant = the paired item, and
    the query and database sets must be the same samples in the same order."""
    if labels_q is None or labels_db is None:
        if len(image_q) != len(text_db):
            raise ValueError(
                f"paired relevance needs equal sizes, got {len(image_q)}/{len(text_db)}"
            )
        labels_q = labels_db = np.arange(len(image_q), dtype=np.int64)  # type: ignore[assignment]
    out: dict[str, float] = {}
    for name, q, db in (("i2t", image_q, text_db), ("t2i", text_q, image_db)):
        total, relevant = metrics.histograms(q, db, labels_q, labels_db)
        out[name] = float(metrics.average_precision(total, relevant).mean())
    out["map"] = 0.5 * (out["i2t"] + out["t2i"])
    return out
