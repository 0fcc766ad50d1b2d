"""The ``near_duplicate_image`` rule: the same picture, re-encoded, resized or lightly edited."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cmrops.cleaning import candidates, dedup
from cmrops.cleaning.graph import collapse_identical, hamming
from cmrops.cleaning.rules.base import CleanData


@dataclass(frozen=True)
class NearImageRule:
    """``clean.near_duplicate_image``."""

    enabled: bool = True
    radius: int = 6  # pHash Hamming radius, inclusive
    dhash_radius: int | None = 10  # confirm a pHash candidate by dHash within this (null: no)
    min_image_cosine: float | None = 0.85  # and by image-embedding cosine (null: no; skipped
    # with a note when preprocess wrote no embeddings)
    drop: Literal["always", "with_caption"] = "always"

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 64:
            raise ValueError(f"radius must be in [0, 64], got {self.radius}")
        if self.dhash_radius is not None and not 0 <= self.dhash_radius <= 64:
            raise ValueError(f"dhash_radius must be in [0, 64] or null, got {self.dhash_radius}")
        if self.min_image_cosine is not None and not -1.0 <= self.min_image_cosine <= 1.0:
            raise ValueError(f"min_image_cosine must be in [-1, 1], got {self.min_image_cosine}")


@dataclass
class NearPairs:
    """The measure of :class:`NearDuplicateImage`: the confirmed near-duplicate edges, what
    each confirmation removed, and what the candidate search did (``throughput.json``)."""

    edges: dedup.Edges
    report: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)


class NearDuplicateImage:
    """pHash within ``radius`` of a kept sample, confirmed by dHash and image embeddings.

    Measures the pairs of samples whose pHash is within ``radius`` (exact radius search in the
    Rust core, incremental through the candidate cache: :mod:`cmrops.cleaning.candidates`),
    confirmed by dHash within ``dhash_radius`` and image-embedding cosine >= ``min_image_cosine``
    when set (the cosine is skipped, with a note, when preprocess wrote no embeddings). The
    duplicate resolution (:mod:`cmrops.cleaning.rules.duplicates`) drops every member of a group
    but its representative: as ``near_duplicate_image`` with ``drop: always``, or - with
    ``drop: with_caption`` - as ``near_duplicate_image_caption`` only when the caption SimHash is
    within ``near_duplicate_caption.radius`` too (an image near-duplicate with different captions
    is then reported, not dropped). Evidence: the kept sample, the matched one, the pHash, dHash
    and caption distances, the resolutions."""

    name = "near_duplicate_image"
    params_type = NearImageRule

    def __init__(self, params: NearImageRule) -> None:
        self.params = params

    def threshold(self, data: CleanData) -> dict[str, Any]:
        p = self.params
        return {
            "radius": p.radius,
            "dhash_radius": p.dhash_radius,
            "min_image_cosine": p.min_image_cosine,
            "drop": p.drop,
        }

    def measure(self, data: CleanData) -> NearPairs:
        c, p, n = data.columns, self.params, data.n
        search: dict[str, Any] = {"queried": 0, "reused_pairs": 0, "index_size": n, "cache": "off"}
        if not p.enabled:
            return NearPairs(dedup.Edges.empty(), {}, search)
        image_emb = data.image_emb
        use_cos = p.min_image_cosine is not None and image_emb is not None
        report: dict[str, Any] = {}
        # rows no rule can tell apart, in classes too large to list their pairs: searched
        # through their first row, the others linked to it (the same groups, linear pairs)
        same = collapse_identical(
            dedup.interchangeable_keys(c["phash"], c["dhash"], image_emb if use_cos else None)
        )
        rows = np.flatnonzero(same.keep)
        found, _, search = candidates.near_candidates(
            [c["sample_id"][i] for i in rows], c["phash"][rows], p.radius,
            cache_dir=data.cache_dir,
        )  # fmt: skip
        pairs = np.concatenate([rows[found].reshape(-1, 2), same.star])
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        dist = hamming(c["phash"][pairs[:, 0]], c["phash"][pairs[:, 1]])
        if same.classes:
            report["collapsed_identical_images"] = same.report()
        near, steps = dedup.near_edges(
            c["phash"], p.radius, dhash=c["dhash"], dhash_radius=p.dhash_radius,
            embeddings=image_emb if use_cos else None,
            min_image_cosine=p.min_image_cosine if use_cos else None,
            candidates=(pairs, dist),
        )  # fmt: skip
        report["near_image_pairs"] = {**steps, "kept": len(near)}
        if p.min_image_cosine is not None and not use_cos:
            report["near_image_pairs"]["cosine_confirmation"] = (
                "not run: preprocess wrote no image embeddings"
            )
        return NearPairs(near, report, search)
