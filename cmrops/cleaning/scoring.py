"""Precision and recall of the clean rules against the defects the synthetic source planted.

Which rule is *meant* to catch which planted defect (:data:`DEFECT_RULES`); defects the earlier
stages catch are scored there and only counted here (:data:`UPSTREAM`):

============== ====================================================== =========================
defect         clean rules that count as catching it                   expected upstream catch
============== ====================================================== =========================
exact_copy     exact_duplicate                                          -
near_copy      near_duplicate_image, near_duplicate_image_caption       -
swapped        mismatch, label_disagreement                             -
noise_image    irrelevant, mismatch, caption_length                     -
empty_caption  caption_length                                           preprocess (empty_captions)
exact_dup      -                                                        collect (duplicate_input)
truncated      -                                                        preprocess (truncated_image)
zero_byte      -                                                        collect (empty_file)
============== ====================================================== =========================

**Per-sample rules** (everything but the duplicate rules): a flagged sample is a true positive
when it was planted with a defect the rule targets; recall is over the planted samples with such
a defect that reached clean. **Duplicate rules** are scored on the planted *families* (an
original and every exact/near copy of it): a flagged duplicate is a true positive when its kept
representative is of its own family; a planted copy counts as caught when it and its original
ended in one duplicate group (so only one of them is kept - which one is the representative rule's
choice, e.g. an up-scaled copy is kept over its smaller original).

Flags are counted whether or not an earlier rule already dropped the sample, so each rule is
scored on its own. A rule with a continuous score (``mismatch``: the aligned image-caption
cosine) also gets ``auroc`` per target defect: samples with no planted defect against the planted
ones, independent of its threshold.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFECT_RULES: dict[str, tuple[str, ...]] = {
    "exact_copy": ("exact_duplicate",),
    "near_copy": ("near_duplicate_image", "near_duplicate_image_caption"),
    "swapped": ("mismatch", "label_disagreement"),
    "noise_image": ("irrelevant", "mismatch", "caption_length"),
    "empty_caption": ("caption_length",),
    "exact_dup": (),
    "truncated": (),
    "zero_byte": (),
}
UPSTREAM: dict[str, str] = {
    "exact_dup": "collect: duplicate_input",
    "zero_byte": "collect: empty_file",
    "truncated": "preprocess: truncated_image",
    "empty_caption": "preprocess: empty_captions",
}
DUPLICATE_RULES = ("exact_duplicate", "near_duplicate_image", "near_duplicate_image_caption")
COPY_DEFECTS = ("exact_copy", "near_copy")


def _aurocs(
    score: np.ndarray, defect_of: Mapping[int, str], targets: Sequence[str]
) -> dict[str, float | None]:
    from cmrops.align.metrics import auroc

    measured = ~np.isnan(score)
    clean = np.array([i not in defect_of for i in range(len(score))]) & measured
    out: dict[str, float | None] = {}
    for d in targets:
        rows = np.array([i for i, dd in defect_of.items() if dd == d and measured[i]], np.int64)
        ok = len(rows) and clean.any()
        out[d] = round(auroc(score[clean], score[rows]), 6) if ok else None
    return out


def rule_targets() -> dict[str, tuple[str, ...]]:
    """Rule -> the planted defects it is meant to catch."""
    out: dict[str, list[str]] = defaultdict(list)
    for defect, rules in DEFECT_RULES.items():
        for r in rules:
            out[r].append(defect)
    return {r: tuple(d) for r, d in sorted(out.items())}


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def score(
    truth: Sequence[Mapping[str, Any]],
    sample_ids: Sequence[str],
    upstream: Mapping[str, str],
    flags: Mapping[str, np.ndarray],
    status: Mapping[str, str],
    drop_group: np.ndarray,
    rep: np.ndarray,
    dropped_reason: Mapping[int, str],
    scores: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Score the rules of one clean run.

    ``truth``: rows of ``synthetic_truth.parquet``; ``sample_ids``: the interim rows (clean's
    input, sorted); ``upstream``: sample_id -> preprocess quarantine reason; ``flags``: rule ->
    bool mask over the rows; ``status``: rule -> run / not_run / off; ``drop_group`` / ``rep``:
    the duplicate drop graph's component and representative per row; ``dropped_reason``: row ->
    the reason clean dropped it; ``scores``: rule -> a per-row score where lower means more
    suspect (NaN: not measured), for which ``auroc`` is added per target defect: the rows with
    no planted defect against the rows with that defect (rank-based, ties half)."""
    row_of = {sid: i for i, sid in enumerate(sample_ids)}
    defect_of: dict[int, str] = {}
    family = np.arange(len(sample_ids))
    copies: list[tuple[str, int, int]] = []  # (defect, copy row, original row)
    per_defect: dict[str, dict[str, Any]] = {}
    for t in truth:
        d = t["defect"]
        entry = per_defect.setdefault(
            d,
            {"planted": 0, "caught_upstream": Counter(), "reached_clean": 0, "dropped_by_clean":
             Counter(), "kept_by_clean": 0, "expected": UPSTREAM.get(d, "clean")},
        )  # fmt: skip
        entry["planted"] += 1
        sid = t.get("sample_id")
        if t.get("collect_reason"):
            entry["caught_upstream"][f"collect: {t['collect_reason']}"] += 1
            continue
        if sid in upstream:
            entry["caught_upstream"][f"preprocess: {upstream[sid]}"] += 1
            continue
        if sid not in row_of:
            entry["caught_upstream"]["not in clean's input"] += 1
            continue
        i = row_of[sid]
        entry["reached_clean"] += 1
        defect_of[i] = d
        if i in dropped_reason:
            entry["dropped_by_clean"][dropped_reason[i]] += 1
        else:
            entry["kept_by_clean"] += 1
        orig = t.get("original_sample_id")
        if d in COPY_DEFECTS and orig in row_of:
            family[i] = row_of[orig]
            copies.append((d, i, row_of[orig]))

    rules: dict[str, Any] = {}
    all_targets = rule_targets()
    for rule in sorted(status):
        targets = all_targets.get(rule, ())
        entry: dict[str, Any] = {"targets": list(targets), "status": status[rule]}
        if entry["status"] != "run" or rule not in flags:
            rules[rule] = {**entry, "precision": None, "recall": None}
            continue
        mask = flags[rule]
        flagged = np.flatnonzero(mask)
        if not targets:  # nothing planted for it: its flags are counted, not scored
            rules[rule] = {**entry, "flagged": len(flagged), "precision": None, "recall": None}
            continue
        if rule in DUPLICATE_RULES:
            tp = int(sum(1 for i in flagged if rep[i] >= 0 and family[rep[i]] == family[i]))
            by_defect = {}
            caught_total = relevant_total = 0
            for d in targets:
                pairs = [(c, o) for dd, c, o in copies if dd == d]
                caught = sum(1 for c, o in pairs if drop_group[c] == drop_group[o])
                by_defect[d] = {"relevant": len(pairs), "caught": caught}
                caught_total += caught
                relevant_total += len(pairs)
        else:
            tp = int(sum(1 for i in flagged if defect_of.get(int(i)) in targets))
            by_defect = {}
            caught_total = relevant_total = 0
            for d in targets:
                rows = [i for i, dd in defect_of.items() if dd == d]
                caught = int(sum(bool(mask[i]) for i in rows))
                by_defect[d] = {"relevant": len(rows), "caught": caught}
                caught_total += caught
                relevant_total += len(rows)
        rules[rule] = {
            **entry,
            "flagged": len(flagged),
            "true_positives": tp,
            "precision": _ratio(tp, len(flagged)),
            "relevant": relevant_total,
            "caught": caught_total,
            "recall": _ratio(caught_total, relevant_total),
            "by_defect": by_defect,
        }
        if scores is not None and rule in scores:
            rules[rule]["auroc"] = _aurocs(scores[rule], defect_of, targets)

    # Overall: every clean drop against every planted defect meant for clean.
    explained = 0
    for i in dropped_reason:
        if defect_of.get(i) in ("swapped", "noise_image", "empty_caption"):
            explained += 1
        elif rep[i] >= 0 and rep[i] != i and family[rep[i]] == family[i]:
            explained += 1  # a planted copy or original whose kept representative is kin
    meant = [i for i, d in defect_of.items() if d in ("swapped", "noise_image", "empty_caption")]
    caught_meant = sum(1 for i in meant if i in dropped_reason)
    caught_copies = sum(1 for _, c, o in copies if drop_group[c] == drop_group[o])
    overall = {
        "dropped": len(dropped_reason),
        "dropped_explained": explained,
        "precision": _ratio(explained, len(dropped_reason)),
        "relevant": len(meant) + len(copies),
        "caught": caught_meant + caught_copies,
        "recall": _ratio(caught_meant + caught_copies, len(meant) + len(copies)),
    }
    defects = {
        d: {
            **{k: v for k, v in e.items() if not isinstance(v, Counter)},
            "caught_upstream": dict(sorted(e["caught_upstream"].items())),
            "dropped_by_clean": dict(sorted(e["dropped_by_clean"].items())),
            "rules": list(DEFECT_RULES.get(d, ())),
        }
        for d, e in sorted(per_defect.items())
    }
    return {"defects": defects, "rules": rules, "overall": overall}
