"""The clean stage's near-duplicate rule against imagededup's hash method, in one process.

    .venv/bin/python benches/bench_clean.py            # 1,000,000 pHashes; baseline on 50,000
    .venv/bin/python benches/bench_clean.py --quick    # 100,000 / 10,000, a smoke run
    .venv/bin/python benches/bench_clean.py --full-baseline   # time every baseline query (~1 h)

**Data.** ``n`` random 64-bit pHashes of which 5 % are planted near-copies of another row (0-4
bits flipped, :func:`cmrops.demo.planted_codes`), each with a random resolution.

**cmrops** runs the rule as the clean stage does (:func:`cmrops.cleaning.dedup.dedup_images`): all
pairs within the radius from the Rust engine (exact multi-index hashing), connected
components, one representative per group (largest resolution, then smallest row), the rest
flagged - on all ``n`` rows, and again on the baseline's subset.

**Baseline: imagededup's hash method.** ``Hashing.find_duplicates(encoding_map,
max_distance_threshold=r, search_method="bktree")`` (imagededup 0.3, not installed here, so its
algorithm is re-implemented faithfully below): hashes are 16-hex-digit strings, a BK-tree is
built by inserting every hash from the first (``BKTree.construct_tree``), every hash is queried
with ``tol = r`` (``BKTree.search``: pop a candidate, compute its distance, keep it when within
``tol``, push the children whose edge distance lies in ``[d - tol, d + tol]``), the query itself
is removed from its results, and ``find_duplicates_to_remove`` keeps the first file of each
result list and removes its duplicates. Its ``hamming_distance`` converts both hex strings to
64-character binary strings and counts differing characters with ``np.sum``; a second baseline row
uses ``int.bit_count`` instead, which is what a careful pure-Python port would do.

A BK-tree query over random 64-bit hashes visits thousands of nodes, so by default the queries
of a random sample (``--baseline-queries``, 2,000) are timed and the query time is scaled to the
whole subset (build time is measured in full); the sampled queries' results are checked against
the engine's pairs.

**Memory**: peak Python allocations (``tracemalloc``, numpy buffers included; Rust's are not) and
the peak of the resident set above the phase's starting point, sampled every 2 ms from
``/proc/self/statm`` - it counts the engine's Rust allocations; for the pure-Python baselines it
reads low, as the interpreter reuses memory freed by an earlier phase, so their tracemalloc peak
is the figure to compare (``resource.getrusage`` max RSS is printed too: the process's
high-water mark). cmrops times are the median of 3 runs. Results also go to
``bench-results/clean.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cmrops
from cmrops.cleaning.dedup import dedup_images
from cmrops.demo import planted_codes

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- memory


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakRss:
    """Peak resident set size above the start, sampled in a thread while the block runs."""

    def __init__(self, every_s: float = 0.002) -> None:
        self.every_s = every_s
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start = _rss()
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.every_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def delta_mib(self) -> float:
        return (self.peak - self.start) / MIB


def measure(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, float, float, Any]:
    """(seconds, peak Python MiB, peak RSS delta MiB, result): the median time of ``repeat``
    runs, RSS on the first, tracemalloc on one more (it slows allocation-heavy code down)."""
    gc.collect()
    times = []
    with PeakRss() as rss:
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    del result
    for _ in range(repeat - 1):
        gc.collect()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    seconds = float(np.median(times))
    gc.collect()
    tracemalloc.start()
    result = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / MIB, rss.delta_mib, result


# --------------------------------------------------------------------------- imagededup's way


def hamming_distance_imagededup(hash1: str, hash2: str) -> float:
    """imagededup ``Hashing.hamming_distance``: binary strings compared character by character."""
    hash1_bin = bin(int(hash1, 16))[2:].zfill(64)
    hash2_bin = bin(int(hash2, 16))[2:].zfill(64)
    return np.sum([i != j for i, j in zip(hash1_bin, hash2_bin, strict=True)])


def hamming_distance_bitcount(hash1: str, hash2: str) -> int:
    return (int(hash1, 16) ^ int(hash2, 16)).bit_count()


class BkTreeNode:
    def __init__(self, node_name: str, node_value: str, parent_name: str | None = None) -> None:
        self.node_name = node_name
        self.node_value = node_value
        self.parent_name = parent_name
        self.children: dict[str, int] = {}


class BKTree:
    """imagededup ``handlers/search/bktree.py``, same structure (insertion made iterative: the
    recursive original needs a raised recursion limit for deep trees, nothing else changes)."""

    def __init__(
        self, hash_dict: dict[str, str], distance_function: Callable[[str, str], Any]
    ) -> None:
        self.hash_dict = hash_dict
        self.distance_function = distance_function
        self.all_keys = list(self.hash_dict.keys())
        self.ROOT = self.all_keys[0]
        self.all_keys = self.all_keys[1:]
        self.dict_all = {self.ROOT: BkTreeNode(self.ROOT, self.hash_dict[self.ROOT])}
        self.candidates = [self.dict_all[self.ROOT].node_name]
        self.construct_tree()

    def _insert_in_tree(self, k: str, current_node: str) -> int:
        while True:
            dist_current_node = self.distance_function(
                self.hash_dict[k], self.dict_all[current_node].node_value
            )
            children = self.dict_all[current_node].children
            if not children or dist_current_node not in list(children.values()):
                children[k] = dist_current_node
                self.dict_all[k] = BkTreeNode(k, self.hash_dict[k], parent_name=current_node)
                return 0
            for i, val in children.items():
                if val == dist_current_node:
                    current_node = i
                    break

    def construct_tree(self) -> None:
        for k in self.all_keys:
            self._insert_in_tree(k, self.ROOT)

    def _get_next_candidates(
        self, query: str, candidate_obj: BkTreeNode, tolerance: int
    ) -> tuple[list[str], bool, Any]:
        dist = self.distance_function(candidate_obj.node_value, query)
        validity = dist <= tolerance
        search_range_dist = list(range(int(dist) - tolerance, int(dist) + tolerance + 1))
        candidate_children = candidate_obj.children
        candidates = [k for k in candidate_children if candidate_children[k] in search_range_dist]
        return candidates, validity, dist

    def search(self, query: str, tol: int = 5) -> dict[str, int]:
        valid_retrievals = {}
        candidates_local = self.candidates.copy()
        dict_all = self.dict_all
        while len(candidates_local) != 0:
            candidate_name = candidates_local.pop()
            cand_list, valid_flag, dist = self._get_next_candidates(
                query, dict_all[candidate_name], tolerance=tol
            )
            if valid_flag:
                valid_retrievals[candidate_name] = int(dist)
            candidates_local.extend(cand_list)
        return valid_retrievals


def imagededup_find_duplicates(
    tree: BKTree, queries: dict[str, str], threshold: int
) -> dict[str, list[str]]:
    """``HashEval`` with ``search_method="bktree"``: every query searched, itself left out."""
    return {
        key: [k for k in sorted(tree.search(value, tol=threshold)) if k != key]
        for key, value in queries.items()
    }


def imagededup_files_to_remove(duplicates: dict[str, list[str]]) -> list[str]:
    """imagededup ``utils.general_utils.get_files_to_remove``."""
    files_to_remove: set[str] = set()
    for k, v in duplicates.items():
        if k not in files_to_remove:
            files_to_remove.update(v)
    return list(files_to_remove)


# --------------------------------------------------------------------------- runs


def run_cmrops(
    codes: np.ndarray, resolution: np.ndarray, radius: int
) -> tuple[dict[str, Any], Any]:
    h = np.ascontiguousarray(codes[:, 0])
    seconds, py_mib, rss_mib, dup = measure(lambda: dedup_images(h, resolution, radius))
    n = len(h)
    pairs = cmrops.near_duplicates(np.ascontiguousarray(h.reshape(-1, 1)), radius)
    row = {
        "method": "cmrops (Rust MIH + components)",
        "n": n,
        "seconds": seconds,
        "us_per_item": seconds / n * 1e6,
        "python_peak_mib": py_mib,
        "rss_peak_delta_mib": rss_mib,
        "pairs": len(pairs),
        "flagged": int(dup.duplicate.sum()),
        "groups": int((np.bincount(dup.labels, minlength=n) >= 2).sum()),
    }
    return row, pairs


def run_baseline(
    codes: np.ndarray,
    radius: int,
    distance: Callable[[str, str], Any],
    name: str,
    sample: int | None,
    seed: int,
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    n = len(codes)
    hashes = {f"{i:07d}": format(int(v), "016x") for i, v in enumerate(codes[:, 0])}
    keys = list(hashes)
    if sample is not None and sample < n:
        rng = np.random.default_rng(seed)
        keys = [keys[i] for i in sorted(rng.choice(n, size=sample, replace=False))]
    queries = {k: hashes[k] for k in keys}
    gc.collect()
    with PeakRss() as rss:  # timing and RSS, without tracemalloc's overhead
        t = time.perf_counter()
        tree = BKTree(hashes, distance)
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        found = imagededup_find_duplicates(tree, queries, radius)
        removed = imagededup_files_to_remove(found)
        query_s = time.perf_counter() - t
    del tree
    gc.collect()
    tracemalloc.start()  # Python peak: the tree and a few queries' results
    tree = BKTree(hashes, distance)
    imagededup_files_to_remove(
        imagededup_find_duplicates(tree, dict(list(queries.items())[:50]), radius)
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del tree
    scale = n / len(queries)
    seconds = build_s + query_s * scale
    row = {
        "method": name,
        "n": n,
        "seconds": seconds,
        "us_per_item": seconds / n * 1e6,
        "python_peak_mib": peak / MIB,
        "rss_peak_delta_mib": rss.delta_mib,
        "build_seconds": build_s,
        "queries_timed": len(queries),
        "query_seconds_timed": query_s,
        "scaled": scale != 1.0,
        "removed_in_timed_queries": len(removed),
    }
    return row, found


def check(found: dict[str, list[str]], pairs: np.ndarray) -> int:
    """Compare the baseline's results for its timed queries with the engine's pairs."""
    neighbours: dict[int, set[int]] = {}
    for a, b in pairs.tolist():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    for key, dups in found.items():
        mine = neighbours.get(int(key), set())
        theirs = {int(d) for d in dups}
        if mine != theirs:
            raise AssertionError(f"row {key}: engine {sorted(mine)} != BK-tree {sorted(theirs)}")
    return len(found)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--subset", type=int, default=50_000, help="baseline subset size")
    ap.add_argument("--radius", type=int, default=4)
    ap.add_argument(
        "--baseline-queries",
        type=int,
        default=2000,
        help="queries timed per baseline (scaled to the subset)",
    )
    ap.add_argument(
        "--faithful-queries",
        type=int,
        default=500,
        help="queries timed for the string-distance baseline (slowest)",
    )
    ap.add_argument("--full-baseline", action="store_true", help="time every baseline query")
    ap.add_argument("--quick", action="store_true", help="100k / 10k, fewer queries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.n, args.subset = 100_000, 10_000
        args.baseline_queries, args.faithful_queries = 500, 100
    rng = np.random.default_rng(args.seed)
    codes, planted = planted_codes(args.n, 1, copy_rate=0.05, max_flips=4, seed=args.seed)
    resolution = rng.integers(64 * 64, 1024 * 1024, size=args.n)
    print(
        f"cmrops {cmrops.__version__} on {platform.machine()} ({os.cpu_count()} CPUs, SIMD "
        f"{cmrops.get_simd_path()}); {args.n:,} pHashes, {len(planted):,} planted near-copies "
        f"(0-4 bits), radius {args.radius}"
    )
    rows = []
    full, _ = run_cmrops(codes, resolution, args.radius)
    rows.append(full)
    sub_codes = np.ascontiguousarray(codes[: args.subset])
    sub, sub_pairs = run_cmrops(sub_codes, resolution[: args.subset], args.radius)
    rows.append(sub)
    fast, found = run_baseline(
        sub_codes,
        args.radius,
        hamming_distance_bitcount,
        "imagededup BK-tree, int.bit_count distance",
        None if args.full_baseline else args.baseline_queries,
        args.seed,
    )
    checked = check(found, sub_pairs)
    rows.append(fast)
    faithful, found = run_baseline(
        sub_codes,
        args.radius,
        hamming_distance_imagededup,
        "imagededup BK-tree, its hamming_distance",
        None if args.full_baseline else args.faithful_queries,
        args.seed,
    )
    checked += check(found, sub_pairs)
    rows.append(faithful)

    head = f"{'method':<46} {'n':>9} {'time s':>9} {'us/item':>9} {'py MiB':>8} {'RSS MiB':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        note = " (scaled)" if r.get("scaled") else ""
        print(
            f"{r['method']:<46} {r['n']:>9,} {r['seconds']:>9.2f} {r['us_per_item']:>9.2f} "
            f"{r['python_peak_mib']:>8.1f} {r['rss_peak_delta_mib']:>8.1f}{note}"
        )
    ratios = {
        "bitcount_bktree_vs_cmrops_same_n": fast["us_per_item"] / sub["us_per_item"],
        "imagededup_bktree_vs_cmrops_same_n": faithful["us_per_item"] / sub["us_per_item"],
        "bitcount_bktree_50k_vs_cmrops_1m_per_item": fast["us_per_item"] / full["us_per_item"],
        "imagededup_bktree_50k_vs_cmrops_1m_per_item": faithful["us_per_item"]
        / full["us_per_item"],
    }
    print(
        f"\nper-item time ratio (baseline / cmrops; > 1: cmrops faster):\n"
        f"  imagededup BK-tree ({args.subset:,}) vs cmrops ({args.n:,}): "
        f"{ratios['imagededup_bktree_50k_vs_cmrops_1m_per_item']:,.0f}x "
        f"(int.bit_count BK-tree: {ratios['bitcount_bktree_50k_vs_cmrops_1m_per_item']:,.0f}x)\n"
        f"  same {args.subset:,} rows: {ratios['imagededup_bktree_vs_cmrops_same_n']:,.0f}x "
        f"(int.bit_count BK-tree: {ratios['bitcount_bktree_vs_cmrops_same_n']:,.0f}x)\n"
        f"  {full['pairs']:,} pairs, {full['groups']:,} groups, {full['flagged']:,} flagged at "
        f"{args.n:,}; baseline results of {checked:,} timed queries match the engine's pairs\n"
        f"  process max RSS (getrusage): "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    out = Path(__file__).resolve().parents[1] / "bench-results" / "clean.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
