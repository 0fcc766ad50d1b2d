"""A short tour of the Hamming engine on generated codes (``cmrops demo`` / ``make run``).

Builds a database of random codes with planted near-copies, then shows exact kNN search checked
against brute force, radius search, all near-duplicate pairs and their groups, and a save/load
round trip, with timings. Needs nothing but the built extension.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import cmrops


def planted_codes(n: int, words: int, copy_rate: float, max_flips: int, seed: int):
    """Random codes where ``copy_rate`` of the rows are near-copies (0..max_flips flipped bits)
    of other rows. Returns the codes and the (copy, original) pairs that were planted."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)
    n_copies = int(n * copy_rate)
    copies = rng.choice(n, size=n_copies, replace=False)
    is_copy = np.zeros(n, dtype=bool)
    is_copy[copies] = True
    originals = rng.choice(np.flatnonzero(~is_copy), size=n_copies)  # never a copy itself
    codes[copies] = codes[originals]
    n_bits = 64 * words
    for f in range(max_flips):
        rows = copies[rng.random(len(copies)) < 0.5 + 0.1 * f / max(1, max_flips)]
        bit = rng.integers(0, n_bits, size=len(rows))
        codes[rows, bit // 64] ^= np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    return codes, np.stack([copies, originals], axis=1)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f} ms"


def main(args: argparse.Namespace) -> int:
    n, bits, seed = args.n, args.bits, args.seed
    if bits % 64:
        raise ValueError(f"--bits: must be a multiple of 64, got {bits}")
    words = bits // 64
    print(
        f"cmrops {cmrops.__version__} Hamming engine — SIMD paths on this CPU: "
        f"{', '.join(cmrops.simd_paths())} (using {cmrops.get_simd_path()})"
    )
    codes, planted = planted_codes(n, words, copy_rate=0.05, max_flips=4, seed=seed)
    print(
        f"database: {n:,} random {bits}-bit codes, "
        f"{len(planted):,} planted near-copies (0-4 bits flipped)"
    )

    t = time.perf_counter()
    index = cmrops.HammingIndex(codes)
    print(
        f"\nbuild index                      {_ms(time.perf_counter() - t)}   "
        f"memory {index.memory_bytes / 1e6:.1f} MB for {codes.nbytes / 1e6:.1f} MB of codes"
    )

    rng = np.random.default_rng(seed + 1)
    queries = np.ascontiguousarray(codes[rng.integers(0, n, size=1000)])
    t = time.perf_counter()
    dist, ids = index.search(queries, 10)
    print(f"kNN, 1,000 queries, k=10         {_ms(time.perf_counter() - t)}")
    check = queries[:20]
    brute = np.bitwise_count(check[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    exact = all(np.array_equal(dist[r], np.sort(brute[r])[:10]) for r in range(len(check)))
    print(f"  exact against numpy brute force on 20 queries: {'yes' if exact else 'NO'}")
    print(f"  query 0: ids {ids[0, :5].tolist()} at distances {dist[0, :5].tolist()}")

    t = time.perf_counter()
    lims, _, _ = index.range_search(queries, 4)
    print(
        f"radius search r=4, 1,000 queries {_ms(time.perf_counter() - t)}   {int(lims[-1]):,} hits"
    )

    t = time.perf_counter()
    pairs = cmrops.near_duplicates(codes, 4)
    dt = time.perf_counter() - t
    found = {(int(a), int(b)) for a, b in pairs}
    want = {(int(min(c, o)), int(max(c, o))) for c, o in planted}
    print(
        f"all near-duplicate pairs r=4     {_ms(dt)}   {len(pairs):,} pairs; "
        f"planted pairs found: {len(want & found):,}/{len(want):,}"
    )
    groups = cmrops.duplicate_groups(codes, 4)
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    print(
        f"duplicate groups r=4             {int((sizes > 1).sum()):,} groups of 2+ "
        f"(largest {int(sizes.max())}); keeping one per group drops {int((sizes - 1).sum()):,} rows"
    )

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.cmrh"
        t = time.perf_counter()
        index.save(path)
        loaded = cmrops.HammingIndex.load(path)
        same = np.array_equal(loaded.search(queries[:50], 10)[1], ids[:50])
        print(
            f"save + load (checksummed)        {_ms(time.perf_counter() - t)}   "
            f"identical results: {'yes' if same else 'NO'}"
        )
    return 0 if exact and same and want <= found else 1
