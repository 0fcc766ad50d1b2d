"""The duplicate resolution: the three duplicate rules decided on one graph.

:class:`Duplicates` measures with :class:`~cmrops.cleaning.rules.exact_duplicate.ExactDuplicate`,
:class:`~cmrops.cleaning.rules.near_duplicate_image.NearDuplicateImage` and
:class:`~cmrops.cleaning.rules.near_duplicate_caption.NearDuplicateCaption`, then decides once:
the image graph (exact and near edges) and the caption graph are grouped into connected
components; among the members of a group that no earlier rule dropped, the representative is the
largest ``width * height``, then the smallest ``sample_id`` (:mod:`cmrops.cleaning.dedup`); every
other member is a duplicate of it - ``exact_duplicate`` when its bytes equal the
representative's, else ``near_duplicate_image`` (``drop: always``) or
``near_duplicate_image_caption`` (``drop: with_caption``, on the edges whose captions are
near-duplicates too). It runs after every per-sample rule, so a sample an earlier rule dropped is
never kept as a representative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cmrops.cleaning import dedup
from cmrops.cleaning.graph import components, hamming, size_histogram
from cmrops.cleaning.rules.base import CleanData, Outcome, off
from cmrops.cleaning.rules.exact_duplicate import ExactDuplicate, ExactDuplicateRule
from cmrops.cleaning.rules.near_duplicate_caption import NearCaptionRule, NearDuplicateCaption
from cmrops.cleaning.rules.near_duplicate_image import NearDuplicateImage, NearImageRule

#: The quarantine reasons of the duplicate resolution, in the order they claim a sample.
REASONS = ("exact_duplicate", "near_duplicate_image", "near_duplicate_image_caption")
#: Evaluated and reported, never a quarantine reason.
REPORTED = ("near_duplicate_caption",)
_EXAMPLES = 20  # example pairs listed per reported rule in the metrics


@dataclass
class DuplicateResult:
    """The outcomes of the duplicate rules and the graphs behind them."""

    rules: dict[str, Outcome]
    image_group: np.ndarray  # component per row of the full image graph
    image_size: np.ndarray
    caption_group: np.ndarray  # component per row of the caption graph (-1: no caption hash)
    caption_size: np.ndarray
    drop: dedup.Duplicates  # the graph duplicates are dropped on
    report: dict[str, Any]
    search: dict[str, Any]  # what the pHash candidate search did (throughput.json, volatile)


class Duplicates:
    """Exact and near-duplicate images resolved together (see the module docstring)."""

    def __init__(
        self, exact: ExactDuplicateRule, near: NearImageRule, caption: NearCaptionRule
    ) -> None:
        self.exact = ExactDuplicate(exact)
        self.near = NearDuplicateImage(near)
        self.caption = NearDuplicateCaption(caption)

    def apply(self, data: CleanData) -> DuplicateResult:
        """Measure with the three rules, then resolve among the samples still kept."""
        exact = self.exact.measure(data)
        near = self.near.measure(data)
        cap_pairs, cap_d, cap_report = self.caption.measure(data)
        report = {**near.report, **cap_report}
        return self.decide(data, exact, near.edges, report, near.search, cap_pairs, cap_d)

    def decide(
        self,
        data: CleanData,
        exact: dedup.Edges,
        near: dedup.Edges,
        report: dict[str, Any],
        search: dict[str, Any],
        cap_pairs: np.ndarray,
        cap_d: np.ndarray,
    ) -> DuplicateResult:
        c, n = data.columns, data.n
        eligible = ~data.dropped
        ex, near_p, cap_p = self.exact.params, self.near.params, self.caption.params
        resolution = c["width"] * c["height"]
        report = dict(report)
        near_thr = self.near.threshold(data)

        # caption graph (SimHash 0 = no caption features: never a duplicate)
        cap_thr = self.caption.threshold(data)
        has_text = c["simhash"] != 0
        caption_group = components(n, cap_pairs)
        caption_group[~has_text] = -1
        caption_size = np.where(
            caption_group >= 0,
            np.bincount(np.maximum(caption_group, 0), minlength=n)[np.maximum(caption_group, 0)],
            0,
        )
        cap_key = set((cap_pairs[:, 0] * n + cap_pairs[:, 1]).tolist())

        image_edges = dedup.Edges.concat([exact if ex.enabled else dedup.Edges.empty(), near])
        image_group = components(n, image_edges.pairs)
        image_size = np.bincount(image_group, minlength=n)[image_group]

        # the graph duplicates are dropped on
        near_drop = near
        if near_p.enabled and near_p.drop == "with_caption":
            # the pair's captions are within the caption radius (what being a caption pair
            # means; asked of the pair itself, since collapsed caption classes list fewer pairs)
            a, b = near.pairs[:, 0], near.pairs[:, 1]
            sh_ = c["simhash"]
            with_cap = has_text[a] & has_text[b] & (hamming(sh_[a], sh_[b]) <= cap_p.radius)
            near_drop = near.select(with_cap & cap_p.enabled)
        drop_edges = dedup.Edges.concat([exact if ex.enabled else dedup.Edges.empty(), near_drop])
        drop = dedup.resolve(n, drop_edges, resolution, eligible)
        nb, nb_dist = dedup.nearest_neighbour(n, drop_edges, drop.rep)

        sha = np.asarray(c["sha256"], dtype=object)
        same_bytes = np.zeros(n, bool)
        has_rep = drop.rep >= 0
        same_bytes[has_rep] = sha[has_rep] == sha[drop.rep[has_rep]]
        exact_flag = drop.duplicate & same_bytes & ex.enabled
        near_flag = drop.duplicate & ~exact_flag
        near_name = (
            "near_duplicate_image" if near_p.drop == "always" else "near_duplicate_image_caption"
        )
        other_name = (
            "near_duplicate_image_caption"
            if near_name == "near_duplicate_image"
            else "near_duplicate_image"
        )

        rules: dict[str, Outcome] = {}
        ids = c["sample_id"]
        dh, ph, sh = c["dhash"], c["phash"], c["simhash"]

        def evidence(i: int, thr: dict[str, Any]) -> dict[str, Any]:
            k = int(drop.rep[i])
            cap_dist = int(hamming(sh[i], sh[k])) if has_text[i] and has_text[k] else None
            return {
                "threshold": thr,
                "kept": ids[k],
                "group": ids[int(drop.labels[i])],
                "group_size": int(drop.size[i]),
                "phash_distance": int(hamming(ph[i], ph[k])),
                "dhash_distance": int(hamming(dh[i], dh[k])),
                "caption_distance": cap_dist,
                "caption_duplicate": bool(
                    cap_dist is not None and cap_p.enabled and cap_dist <= cap_p.radius
                ),
                "identical_bytes": bool(same_bytes[i]),
                "matched": ids[int(nb[i])] if nb[i] >= 0 else None,
                "matched_phash_distance": int(nb_dist[i]) if nb[i] >= 0 else None,
                "resolution": int(resolution[i]),
                "kept_resolution": int(resolution[k]),
            }

        exact_thr = self.exact.threshold(data)
        if ex.enabled:
            r = Outcome("exact_duplicate", "run", True, exact_thr, flagged=exact_flag)
            for i in np.flatnonzero(exact_flag):
                r.evidence[int(i)] = evidence(int(i), exact_thr)
                r.detail[int(i)] = f"identical image bytes to kept {ids[int(drop.rep[i])]}"
            rules["exact_duplicate"] = r
        else:
            rules["exact_duplicate"] = off("exact_duplicate", exact_thr)
        thr_all = {**near_thr, "caption_radius": cap_p.radius}
        if near_p.enabled:
            r = Outcome(near_name, "run", True, thr_all, flagged=near_flag)
            for i in np.flatnonzero(near_flag):
                e = evidence(int(i), thr_all)
                r.evidence[int(i)] = e
                r.detail[int(i)] = (
                    f"near-duplicate image of kept {e['kept']} (pHash distance "
                    f"{e['phash_distance']} <= {near_p.radius}"
                    f"{', caption too' if e['caption_duplicate'] else ''})"
                )
            rules[near_name] = r
            rules[other_name] = Outcome(
                other_name, "off", True, thr_all,
                why=f"near_duplicate_image.drop is {near_p.drop!r}",
            )  # fmt: skip
        else:
            rules["near_duplicate_image"] = off("near_duplicate_image", thr_all)
            rules["near_duplicate_image_caption"] = off("near_duplicate_image_caption", thr_all)

        # caption near-duplicates: reported only
        img_key = set((image_edges.pairs[:, 0] * n + image_edges.pairs[:, 1]).tolist())
        both = sum(1 for k in cap_key if k in img_key)
        cap_rule = Outcome(
            "near_duplicate_caption", "run" if cap_p.enabled else "off", False, cap_thr
        )
        if cap_p.enabled:
            cap_rule.flagged = caption_size >= 2
            only = [
                (a, b, d)
                for (a, b), d in zip(cap_pairs.tolist(), cap_d.tolist(), strict=True)
                if a * n + b not in img_key
            ]
            cap_rule.report = {
                "pairs": len(cap_pairs),
                "pairs_image_also_duplicate": both,
                "pairs_image_differs": len(only),
                "examples_image_differs": [
                    {"a": ids[a], "b": ids[b], "caption_distance": d,
                     "phash_distance": int(hamming(ph[a], ph[b]))}
                    for a, b, d in only[:_EXAMPLES]
                ],
            }  # fmt: skip
        else:
            cap_rule.why = "disabled in params"
        rules["near_duplicate_caption"] = cap_rule

        report["image_groups"] = size_histogram(image_group)
        report["caption_groups"] = size_histogram(caption_group[caption_group >= 0])
        report["drop_groups"] = size_histogram(drop.labels)
        report["representative_rule"] = "largest width*height, then smallest sample_id"
        return DuplicateResult(
            rules, image_group, image_size, caption_group, caption_size, drop, report, search
        )
