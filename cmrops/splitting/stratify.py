"""Multi-label iterative stratification of near-duplicate groups, placed by a stable hash.

The algorithm is Sechidis, Tsoumakas & Vlahavas (2011), "On the stratification of multi-label
data" (ECML PKDD), applied to *groups* (a group carries the label counts of its samples and its
sample count as weight), with its random choices replaced by a seeded hash so that the result is
deterministic and moves as little as possible when data is added:

1. **Targets.** Subset ``j`` should hold ``t_j`` samples (given) and, for every label ``l`` with
   ``n_l`` samples, ``T_jl`` of them: ``n_l * t_j / N`` rounded by largest remainder, where every
   subset gets at least one when ``n_l >= k`` (the number of subsets) - so a rare label appears in
   every split as soon as it has enough samples. Demands start at the targets.
2. **Hash preference.** Each group draws ``U_gj = H(seed, group key, subset name)`` uniform in
   (0, 1) and ranks the subsets by ``-ln(U_gj) / r_j`` (weighted rendezvous hashing): the first
   choice is subset ``j`` with probability ``r_j = t_j / N``, and it depends only on the group's
   own key.
3. **Iterate** (Sechidis): take the label with the fewest samples still unplaced - among the
   labels with at least ``k`` samples first, so that a label too rare to reach every subset
   does not use up, before their turn, the groups a splittable label needs spread (ties: label
   id). Place every unplaced group holding it, in order of ``H(seed, group key)``:

   a. into a subset whose demand for that label and whose size demand are both positive;
   b. else into a subset holding none of the label yet though it wants one (over its size:
      presence first);
   c. else, when the label's demands are used up, into the most preferred subset with room;
   d. else Sechidis's own choice: the largest label demand, then the largest size demand.

   Among several candidates in (a) and (b), the one lacking most of the group's rare labels (a
   label of which it wants exactly one and has none) wins, then the group's hash preference.
   Placing a group lowers the demands of all its labels and its subset's size demand.
4. **Unlabelled groups** go to their most preferred subset with size demand left (else the
   largest size demand).
5. Optionally (``exact``), sizes are made exact by moving groups no earlier decision fixed:
   first those whose move takes no label out of a set entirely, then the least harmful to the
   label balance, then those closest to the boundary by their hash scores. With
   ``keep_presence`` a move that would take a label out of a set is not made (sizes may then
   stay a little off target, and say so in the metrics).

Groups given a fixed subset (an *anchor*, e.g. a released split) are placed first and only lower
the demands. Without an anchor, adding data changes an existing assignment only where a label's
demand now runs out at a different group (measured: 2-4 % of the samples for 10 % more data,
``tests/test_split.py``); with an anchor, existing samples never move.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def largest_remainder(total: int, fractions: np.ndarray, minimum: int = 0) -> np.ndarray:
    """Integers summing to ``total`` proportional to ``fractions`` (largest-remainder rounding),
    each at least ``minimum`` when ``total >= minimum * len(fractions)``."""
    r = np.asarray(fractions, dtype=np.float64)
    r = r / r.sum()
    k = len(r)
    floor_min = minimum if total >= minimum * k else 0
    base = np.full(k, floor_min, np.int64)
    rest = total - base.sum()
    want = r * total - base  # what each still wants beyond its minimum
    want = np.maximum(want, 0.0)
    want = want / want.sum() * rest if want.sum() > 0 else r * rest
    share = np.floor(want).astype(np.int64)
    left = int(rest - share.sum())
    order = np.lexsort((np.arange(k), -(want - share)))  # biggest remainder, then first subset
    share[order[:left]] += 1
    return base + share


def _h64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def unit_hash(keys: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """``H(seed, key, salt)`` as floats in (0, 1), stable across processes and machines."""
    vals = np.fromiter(
        (_h64(f"{seed}\x1f{key}\x1f{salt}") for key in keys), dtype=np.uint64, count=len(keys)
    )
    return ((vals >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def preference_scores(
    keys: Sequence[str], seed: int, names: Sequence[str], fractions: np.ndarray
) -> np.ndarray:
    """``-ln(U_gj) / r_j`` per group and subset: lower is preferred (weighted rendezvous)."""
    r = np.asarray(fractions, dtype=np.float64)
    cols = [-np.log(unit_hash(keys, seed, f"subset={name}")) / max(float(r[j]), 1e-12)
            for j, name in enumerate(names)]  # fmt: skip
    return np.stack(cols, axis=1) if cols else np.zeros((len(keys), 0))


@dataclass(frozen=True)
class GroupLabels:
    """Label counts of groups in CSR form: group ``g`` has labels ``label[ptr[g]:ptr[g+1]]`` with
    ``count[ptr[g]:ptr[g+1]]`` samples each."""

    ptr: np.ndarray
    label: np.ndarray
    count: np.ndarray
    n_labels: int

    @staticmethod
    def from_samples(
        group: np.ndarray, n_groups: int, sample_labels: Sequence[Sequence[int]], n_labels: int
    ) -> GroupLabels:
        """From per-sample label ids and each sample's group index."""
        g_idx, l_idx = [], []
        for s, labels in enumerate(sample_labels):
            for lab in set(labels):
                g_idx.append(int(group[s]))
                l_idx.append(int(lab))
        if not g_idx:
            return GroupLabels(np.zeros(n_groups + 1, np.int64), np.zeros(0, np.int64),
                               np.zeros(0, np.int64), n_labels)  # fmt: skip
        key = np.asarray(g_idx, np.int64) * max(n_labels, 1) + np.asarray(l_idx, np.int64)
        uniq, cnt = np.unique(key, return_counts=True)
        gg, ll = uniq // max(n_labels, 1), uniq % max(n_labels, 1)
        ptr = np.zeros(n_groups + 1, np.int64)
        np.add.at(ptr, gg + 1, 1)
        return GroupLabels(np.cumsum(ptr), ll.astype(np.int64), cnt.astype(np.int64), n_labels)

    def of(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.ptr[g], self.ptr[g + 1]
        return self.label[a:b], self.count[a:b]

    def totals(self, mask: np.ndarray | None = None) -> np.ndarray:
        """Samples per label over the groups of ``mask`` (all by default)."""
        out = np.zeros(self.n_labels, np.int64)
        groups = np.repeat(np.arange(len(self.ptr) - 1), np.diff(self.ptr))
        sel = np.ones(len(self.label), bool) if mask is None else mask[groups]
        np.add.at(out, self.label[sel], self.count[sel])
        return out


def stratify(
    keys: Sequence[str],
    weights: np.ndarray,
    labels: GroupLabels,
    names: Sequence[str],
    size_targets: np.ndarray,
    seed: int,
    *,
    fixed: np.ndarray | None = None,
    exact: bool = False,
    keep_presence: bool = True,
) -> np.ndarray:
    """Subset index per group (see module docstring). ``keys`` identify the groups (stable
    strings), ``weights`` are their sample counts, ``size_targets`` the samples per subset
    (summing to ``weights.sum()``), ``fixed`` a subset per group or -1 (free)."""
    n_groups, k = len(keys), len(names)
    weights = np.asarray(weights, np.int64)
    targets = np.asarray(size_targets, np.int64)
    total = int(weights.sum())
    if int(targets.sum()) != total:
        raise ValueError(f"size targets sum to {int(targets.sum())}, not {total} samples")
    r = targets / max(total, 1)
    pref = preference_scores(keys, seed, names, r)
    rank = np.argsort(pref, axis=1, kind="stable")  # rank[g] = subsets, most preferred first
    order_key = unit_hash(keys, seed, "order")

    assign = (
        np.full(n_groups, -1, np.int64) if fixed is None else np.asarray(fixed, np.int64).copy()
    )
    label_totals = labels.totals()
    demand = np.stack([largest_remainder(int(n), r, minimum=1) for n in label_totals], axis=1) \
        if labels.n_labels else np.zeros((k, 0), np.int64)  # fmt: skip
    size_demand = targets.copy()

    target = demand.copy()

    def _pick(g: int, cands: list[int]) -> int:
        """The candidate (in preference order) lacking most of the group's labels of which it
        wants exactly one (the presence of a rare label); -1 when there is none."""
        if len(cands) <= 1:
            return int(cands[0]) if cands else -1
        labs, _ = labels.of(g)
        absent = [int(((demand[m, labs] == target[m, labs]) & (target[m, labs] == 1)).sum())
                  for m in cands]  # fmt: skip
        return int(cands[int(np.argmax(absent))])

    def place(g: int, m: int) -> None:
        assign[g] = m
        labs, cnts = labels.of(g)
        demand[m, labs] -= cnts
        size_demand[m] -= weights[g]

    for g in np.flatnonzero(assign >= 0):  # anchored groups first
        m = int(assign[g])
        assign[g] = -1
        place(int(g), m)

    free = assign < 0
    remaining = labels.totals(free)
    # groups per label, in hash order
    group_of_entry = np.repeat(np.arange(n_groups), np.diff(labels.ptr))
    by_label: list[np.ndarray] = []
    for lab in range(labels.n_labels):
        gs = group_of_entry[labels.label == lab]
        by_label.append(gs[np.argsort(order_key[gs], kind="stable")])
    done_label = np.zeros(labels.n_labels, bool)
    while True:
        cand = np.flatnonzero((remaining > 0) & ~done_label)
        if len(cand) == 0:
            break
        # labels that can reach every subset first, then those too rare to; fewest left first
        lab = int(cand[np.lexsort((cand, remaining[cand], label_totals[cand] < k))[0]])
        done_label[lab] = True
        for g in by_label[lab]:
            g = int(g)
            if assign[g] >= 0:
                continue
            choice = _pick(g, [m for m in rank[g] if demand[m, lab] > 0 and size_demand[m] > 0])
            if choice < 0:  # over a set's size only to bring the label into it at all
                choice = _pick(g, [m for m in rank[g] if demand[m, lab] == target[m, lab] > 0])
            if choice < 0:  # the label is placed everywhere it is needed: mind the sizes
                choice = next((int(m) for m in rank[g] if size_demand[m] > 0), -1)
            if choice < 0:
                pos = np.empty(k, np.int64)
                pos[rank[g]] = np.arange(k)
                choice = int(np.lexsort((pos, -size_demand, -demand[:, lab]))[0])
            place(g, choice)
            labs, cnts = labels.of(g)
            remaining[labs] -= cnts
    for g in np.flatnonzero(assign < 0)[np.argsort(order_key[assign < 0], kind="stable")]:
        g = int(g)
        choice = next((int(m) for m in rank[g] if size_demand[m] > 0), -1)
        if choice < 0:
            choice = int(np.argmax(size_demand))
        place(g, choice)

    if exact:
        movable = np.ones(n_groups, bool) if fixed is None else np.asarray(fixed) < 0
        _exact_sizes(assign, weights, targets, pref, movable, labels, demand, target, keep_presence)
    return assign


def _exact_sizes(
    assign: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    pref: np.ndarray,
    movable: np.ndarray,
    labels: GroupLabels,
    demand: np.ndarray,
    target: np.ndarray,
    keep_presence: bool,
) -> None:
    """Move movable groups from subsets over their size target to subsets under it, one at a
    time: the group whose move hurts the label balance least - first, labels it would remove
    from a set entirely; then label samples taken from a set that needs them or given to a set
    that has enough - then whose hash scores for the two sets are closest; stops when no move
    fits (with ``keep_presence``: when every move would take a label out of a set entirely)."""
    k = len(targets)
    sizes = np.bincount(assign, weights=weights, minlength=k).astype(np.int64)
    while True:
        over = np.flatnonzero(sizes > targets)
        under = np.flatnonzero(sizes < targets)
        if not len(over) or not len(under):
            return
        a = int(over[np.argmax(sizes[over] - targets[over])])
        b = int(under[np.argmax(targets[under] - sizes[under])])
        room = min(sizes[a] - targets[a], targets[b] - sizes[b])
        cands = np.flatnonzero((assign == a) & movable & (weights <= room))
        if not len(cands):
            return
        lost = np.zeros(len(cands), np.int64)
        harm = np.zeros(len(cands), np.int64)
        for x, g in enumerate(cands):
            labs, cnts = labels.of(int(g))
            have = target[a, labs] - demand[a, labs]
            lost[x] = int(((have - cnts <= 0) & (target[a, labs] > 0)).sum())
            harm[x] = int((cnts * ((demand[a, labs] >= 0) + (demand[b, labs] <= 0))).sum())
        gap = pref[cands, b] - pref[cands, a]
        best = np.lexsort((cands, gap, harm, lost))[0]
        if keep_presence and lost[best] > 0:
            return
        g = int(cands[best])
        labs, cnts = labels.of(g)
        demand[a, labs] += cnts
        demand[b, labs] -= cnts
        sizes[a] -= weights[g]
        sizes[b] += weights[g]
        assign[g] = b
