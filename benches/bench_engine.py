"""The Ray engine against the local process pool, and incremental against full near-duplicate
candidate search, in one process.

    .venv/bin/python benches/bench_engine.py            # 500 synthetic samples; 2,000 + 200 pHashes
    .venv/bin/python benches/bench_engine.py --quick    # 120 samples, embeddings off only

**Preprocess.** The built-in synthetic source (``n`` samples, seed 0) through the preprocess
stage, ``shard_size`` 64, 2 decode workers, embeddings off and on (the default encoders, CPU),
once on ``engine: local`` (spawn process pool, encoders in this process) and once on a local Ray
cluster (127.0.0.1, every core; decode tasks, one encoder actor). Each run starts from an empty
output folder; the Ray cluster is started once before (its start-up is printed apart). Both
engines' outputs are checked byte-identical.

**Clean candidates.** ``base + added`` random pHashes with 5 % planted near-copies
(:func:`cmrops.demo.planted_codes`): the full search (an empty cache: every row queried against
the index of all rows) against the incremental one (the cache holds ``base`` of the rows: only the
``added`` are queried), both on the local engine, radius 6, each writing its cache as clean does
(atomic, fsync'd), the median of 3 runs; the pair sets are checked equal. Results also go to
``bench-results/engine.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrops import engine
from cmrops.cleaning.candidates import near_candidates
from cmrops.demo import planted_codes
from cmrops.sources.synthetic import DefectRates
from cmrops.stages import collect, preprocess

FILES = ("samples.parquet", "quarantine.parquet", "features/image.npy", "features/text.npy")


def _outputs(out: Path) -> dict[str, bytes]:
    return {f: (out / f).read_bytes() for f in FILES if (out / f).is_file()}


def bench_preprocess(tmp: Path, n: int, embeddings: list[bool]) -> list[dict[str, Any]]:
    raw = tmp / "raw"
    spec = collect.SourceSpec(
        name="synthetic", kind="synthetic", n=n, seed=0, defects=DefectRates()
    )
    collect.run(collect.CollectParams(sources=(spec,)), raw)
    t0 = time.perf_counter()
    ray_engine = engine.RayEngine(engine.EngineParams(kind="ray")).start()
    print(f"ray local cluster start: {time.perf_counter() - t0:.1f} s")
    rows = []
    try:
        for emb in embeddings:
            params = preprocess.PreprocessParams(
                n_workers=2, shard_size=64, device="cpu", embeddings=emb
            )
            secs = {}
            for kind in ("local", "ray"):
                out = tmp / f"out-{kind}-{emb}"
                eng = ray_engine if kind == "ray" else engine.LocalEngine()
                t0 = time.perf_counter()
                with engine.session(eng):
                    preprocess.run(params, raw, out)
                secs[kind] = time.perf_counter() - t0
            same = _outputs(tmp / f"out-local-{emb}") == _outputs(tmp / f"out-ray-{emb}")
            row = {
                "samples": n,
                "embeddings": emb,
                "local_s": round(secs["local"], 2),
                "ray_s": round(secs["ray"], 2),
                "ray_over_local": round(secs["ray"] / secs["local"], 2),
                "byte_identical": same,
            }
            print(
                f"preprocess n={n} embeddings={emb}: local {row['local_s']} s, ray "
                f"{row['ray_s']} s, ray/local {row['ray_over_local']}x, byte-identical {same}"
            )
            rows.append(row)
    finally:
        ray_engine.close()
    return rows


def bench_candidates(tmp: Path, base: int, added: int, radius: int = 6) -> dict[str, Any]:
    codes, _ = planted_codes(base + added, 1, 0.05, 4, seed=0)
    phash = codes[:, 0].copy()
    ids = [f"{i:012d}" for i in range(base + added)]
    first = np.zeros(base + added, bool)
    first[np.random.default_rng(1).choice(base + added, base, replace=False)] = True

    def full() -> tuple[float, np.ndarray]:  # a first clean run: searches all, writes the cache
        cache = tmp / "cache-full"
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        pairs, _, _ = near_candidates(ids, phash, radius, cache_dir=cache)
        return time.perf_counter() - t0, pairs

    def incremental() -> tuple[float, np.ndarray, dict[str, Any]]:
        cache = tmp / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        sub = [i for i, keep in zip(ids, first, strict=True) if keep]
        near_candidates(sub, phash[first], radius, cache_dir=cache)
        t0 = time.perf_counter()
        pairs, _, stats = near_candidates(ids, phash, radius, cache_dir=cache)
        return time.perf_counter() - t0, pairs, stats

    full_runs = [full() for _ in range(3)]
    inc_runs = [incremental() for _ in range(3)]
    t_full = statistics.median(r[0] for r in full_runs)
    t_inc = statistics.median(r[0] for r in inc_runs)
    same = all(np.array_equal(r[1], full_runs[0][1]) for r in inc_runs)
    stats = inc_runs[0][2]
    row = {
        "base": base,
        "added": added,
        "pairs": len(full_runs[0][1]),
        "full_s": round(t_full, 4),
        "incremental_s": round(t_inc, 4),
        "full_over_incremental": round(t_full / t_inc, 1),
        "queried": stats["queried"],
        "reused_pairs": stats["reused_pairs"],
        "same_pairs": same,
    }
    print(
        f"clean candidates {base:,} + {added:,}: full {t_full * 1000:.1f} ms, incremental "
        f"{t_inc * 1000:.1f} ms ({row['full_over_incremental']}x; queried {stats['queried']}, "
        f"reused {stats['reused_pairs']} pairs), same pairs {same}"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=500, help="synthetic samples for preprocess")
    ap.add_argument("--candidates-only", action="store_true", help="skip preprocess")
    args = ap.parse_args()
    n, emb = (120, [False]) if args.quick else (args.n, [False, True])
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, Any] = {}
        if not args.candidates_only:
            results["preprocess"] = bench_preprocess(Path(tmp), n, emb)
        sizes = [(2_000, 200)] if args.quick else [(2_000, 200), (200_000, 20_000)]
        results["candidates"] = [bench_candidates(Path(tmp), b, a) for b, a in sizes]
    out = Path(__file__).resolve().parents[1] / "bench-results" / "engine.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
