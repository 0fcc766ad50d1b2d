"""Preprocessing throughput against ``imagehash``, and embedding throughput, in one process.

    .venv/bin/python benches/bench_preprocess.py            # synthetic set + COCO sample
    .venv/bin/python benches/bench_preprocess.py --quick    # fewer images, a smoke run

Per-core rows run one image at a time in this process (one core): bytes in memory -> result.

- ``cmrops decode+hash``: :func:`cmrops.imaging.decode_image` (full decode, pixel cap, EXIF, RGB)
  + pHash + dHash - what the stage needs when embeddings are off;
- ``cmrops decode+hash+resize``: the same plus the 224 x 224 encoder copy (embeddings on);
- baseline ``imagehash.phash``: ``Image.open`` + ``imagehash.phash`` on the same bytes (its own
  decode, no safety checks, no dHash); ``imagehash phash+dhash`` adds ``imagehash.dhash``.

The ratio is baseline time / cmrops time (> 1: cmrops is faster). pHash agreement is the share of
images whose 64 bits equal ``imagehash.phash``'s. Then the whole stage (embeddings off, worker
processes) on the COCO sample, and the embedding throughput of both default encoders on the CPU
(batch 64): torch eager, the baseline, against the pipeline's runtime (ONNX Runtime), at one
thread and at the whole thread budget, interleaved rounds, with the smallest cosine between the
two (targets: image >= 2.5x, text >= 2x, cosine >= 0.9999). ``--embeddings-only`` runs just
that. Results are also written to bench-results/preprocess.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import imagehash
from PIL import Image

from cmrops.imaging import decode_image, image_hashes, resize_for_encoder, uint64_to_bits
from cmrops.threads import cpu_model

REPO = Path(__file__).resolve().parents[1]
COCO = Path(os.environ.get("CMROPS_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco_mini"


def synthetic_images(n: int) -> list[bytes]:
    """The collect stage's rendered scenes (JPEG and PNG, 96-160 px), seeded."""
    from cmrops.sources.scenes import encode, render, sample_scene

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, 96, 160, 0.7)
        out.append(encode(render(scene), scene.fmt, scene.quality))
    return out


def coco_images(n: int) -> list[bytes]:
    lines = (COCO / "pairs.jsonl").read_text().splitlines()[:n]
    return [(COCO / json.loads(x)["image"]).read_bytes() for x in lines]


def per_image_seconds(
    fns: dict[str, Callable[[bytes], Any]], images: list[bytes], repeat: int
) -> dict[str, float]:
    """Median over ``repeat`` rounds of the mean seconds per image of each function. Rounds
    interleave the functions, so a busy machine slows them alike; a warm-up pass over a few
    images first keeps lazy imports (scipy's DCT, Pillow plugins) out of the timings."""
    for fn in fns.values():
        for data in images[:10]:
            fn(data)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            for data in images:
                fn(data)
            times[name].append((time.perf_counter() - t) / len(images))
    return {name: statistics.median(v) for name, v in times.items()}


def ours_hash(data: bytes) -> tuple[int, int]:
    return image_hashes(decode_image(data).image)


def ours_full(data: bytes) -> np.ndarray:
    image = decode_image(data).image
    image_hashes(image)
    return resize_for_encoder(image, 224)


def base_phash(data: bytes) -> Any:
    return imagehash.phash(Image.open(io.BytesIO(data)))


def base_phash_dhash(data: bytes) -> Any:
    im = Image.open(io.BytesIO(data))
    im.load()
    return imagehash.phash(im), imagehash.dhash(im)


def agreement(images: list[bytes]) -> float:
    same = 0
    for data in images:
        image = decode_image(data).image
        ours = uint64_to_bits(image_hashes(image)[0]).reshape(8, 8)
        same += bool((ours == imagehash.phash(image).hash).all())
    return same / len(images)


def bench_decode(name: str, images: list[bytes], repeat: int, rows: list[dict[str, Any]]) -> None:
    t = per_image_seconds(
        {
            "phash": base_phash,
            "phash_dhash": base_phash_dhash,
            "hash": ours_hash,
            "full": ours_full,
        },
        images,
        repeat,
    )
    same = round(agreement(images), 3)
    for label, key in (("decode+hash", "hash"), ("decode+hash+resize", "full")):
        rows.append(
            {
                "set": name,
                "n": len(images),
                "what": f"cmrops {label}",
                "images_per_s_per_core": round(1 / t[key], 1),
                "imagehash_phash_per_s": round(1 / t["phash"], 1),
                "imagehash_phash_dhash_per_s": round(1 / t["phash_dhash"], 1),
                "ratio_vs_phash": round(t["phash"] / t[key], 2),
                "ratio_vs_phash_dhash": round(t["phash_dhash"] / t[key], 2),
                "phash_identical": same,
            }
        )


def bench_stage(images_n: int, workers: int) -> dict[str, Any]:
    """The whole stage (embeddings off) on the COCO sample, in worker processes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cmrops.schema import RAW_SAMPLES
    from cmrops.stages.preprocess import PreprocessParams, run

    lines = (COCO / "pairs.jsonl").read_text().splitlines()[:images_n]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        rows = []
        for i, line in enumerate(lines):
            r = json.loads(line)
            rel = f"objects/{i:04d}.jpg"
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            data = (COCO / r["image"]).read_bytes()
            (raw / rel).write_bytes(data)
            import hashlib

            rows.append(
                {
                    "sample_id": f"{i:016x}",
                    "source": "coco",
                    "source_key": r["image"],
                    "image_sha256": hashlib.sha256(data).hexdigest(),
                    "image_path": rel,
                    "image_bytes": len(data),
                    "captions": r["captions"],
                    "labels": r["labels"],
                    "extra": "{}",
                }
            )
        pq.write_table(pa.Table.from_pylist(rows, schema=RAW_SAMPLES), raw / "samples.parquet")
        params = PreprocessParams(n_workers=workers, shard_size=20, embeddings=False)
        t = time.perf_counter()
        run(params, raw, Path(tmp) / "out")
        wall = time.perf_counter() - t
        timing = json.loads((Path(tmp) / "out" / "throughput.json").read_text())
    return {
        "workers": workers,
        "images": len(lines),
        "wall_s": round(wall, 2),
        "images_per_s": round(len(lines) / wall, 1),
        "images_per_s_per_worker_cpu": timing.get("images_per_s_per_worker"),
    }


def bench_embeddings(images: list[bytes], captions: list[str], repeat: int) -> list[dict[str, Any]]:
    """Both default encoders, torch eager (the baseline) against the pipeline's CPU runtime
    (ONNX Runtime), at one thread and at every CPU of the thread budget: best of ``repeat``
    interleaved rounds, batch 64, and the smallest cosine between the two runtimes' rows."""
    from cmrops import threads
    from cmrops.encoders import load_image_encoder, load_text_encoder

    pixels = np.stack([resize_for_encoder(decode_image(b).image, 224) for b in images])
    rows = []
    before = threads.current()
    try:
        for n in sorted({1, before}):
            threads.apply(n)
            for kind, load, data in (
                ("image", load_image_encoder, pixels),
                ("text", load_text_encoder, captions),
            ):
                base = load(device="cpu", runtime="torch")
                ours = load(device="cpu")
                base.encode(data[:8], 8, progress=False)  # warm-up
                ours.encode(data[:8], 8, progress=False)
                tb, to = [], []
                for _ in range(repeat):
                    tb.append(_timed(lambda e=base, d=data: e.encode(d, 64, progress=False)))
                    to.append(_timed(lambda e=ours, d=data: e.encode(d, 64, progress=False)))
                a = base.encode(data, 64, progress=False)
                b = ours.encode(data, 64, progress=False)
                ceiling = _text_ceiling(ours, data, n, min(tb), min(to)) if kind == "text" else {}
                rows.append(
                    {
                        "kind": kind,
                        "encoder": ours.name,
                        "threads": n,
                        "items": len(data),
                        "runtime": ours.runtime,
                        "torch_eager_per_s": round(len(data) / min(tb), 1),
                        "ours_per_s": round(len(data) / min(to), 1),
                        "ratio_vs_torch_eager": round(min(tb) / min(to), 2),
                        "min_cosine_vs_torch": round(float((a * b).sum(1).min()), 6),
                        **ceiling,
                    }
                )
    finally:
        threads.apply(before)
    return rows


def _text_ceiling(
    encoder: Any, texts: list[str], threads: int, torch_s: float, ours_s: float
) -> dict[str, Any]:
    """How far from this CPU's fp32 ceiling the text encoder runs: the FLOPs of its linear
    layers over the tokens it embeds (padding included, batches of 64 as ``encode`` makes
    them), per second, for torch eager and the runtime, against a float32 GEMM of the model's
    own shape (tokens of one batch x hidden x 4 hidden, numpy's BLAS at the same thread count,
    best of several). No fp32 runtime can beat torch by more than ceiling / torch's rate."""
    from threadpoolctl import threadpool_limits
    from transformers import AutoModel

    from cmrops.encoders import TEXT_DEFAULT, resolve_model_dir

    model = AutoModel.from_pretrained(str(resolve_model_dir(TEXT_DEFAULT)), local_files_only=True)
    per_token = 2 * sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if ".layer." in f".{name}." and m.__class__.__name__ == "Linear"
    )
    hidden = int(model.config.hidden_size)
    distinct = list(dict.fromkeys(texts))
    lengths = sorted(encoder._tokens(distinct))
    batches = [lengths[i : i + 64] for i in range(0, len(lengths), 64)]
    padded = sum(max(b) * len(b) for b in batches)
    flops = per_token * padded
    rng = np.random.default_rng(0)
    a = rng.random((64 * 16, hidden), dtype=np.float32)
    b = rng.random((hidden, 4 * hidden), dtype=np.float32)
    with threadpool_limits(threads):
        a @ b
        gemm = min(_timed(lambda: a @ b) for _ in range(20))
    return {
        "tokens": sum(lengths),
        "tokens_padded": padded,
        "torch_eager_gflops": round(flops / torch_s / 1e9, 1),
        "ours_gflops": round(flops / ours_s / 1e9, 1),
        "sgemm_gflops": round(2 * a.shape[0] * hidden * 4 * hidden / gemm / 1e9, 1),
    }


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats")
    ap.add_argument("--embeddings-only", action="store_true", help="only the encoder rows")
    ap.add_argument("--out", default=str(REPO / "bench-results" / "preprocess.json"))
    args = ap.parse_args()
    n_syn, n_coco, repeat = (100, 40, 1) if args.quick else (500, 159, 5)

    rows: list[dict[str, Any]] = []
    have_coco = (COCO / "pairs.jsonl").is_file()
    if not args.embeddings_only:
        bench_decode("synthetic", synthetic_images(n_syn), repeat, rows)
    if not have_coco:
        print(f"(COCO sample not found at {COCO}: skipping its rows)")
    elif not args.embeddings_only:
        bench_decode("coco_mini", coco_images(n_coco), repeat, rows)

    print(f"\nper core, one image at a time ({cpu_model()}):")
    head = f"{'set':<10} {'what':<28} {'img/s':>7} {'ih.phash/s':>10} {'ratio':>6}"
    print(head + f" {'ih.p+d/s':>9} {'ratio':>6} {'pHash ==':>8}")
    for r in rows:
        print(
            f"{r['set']:<10} {r['what']:<28} {r['images_per_s_per_core']:>7} "
            f"{r['imagehash_phash_per_s']:>10} {r['ratio_vs_phash']:>6} "
            f"{r['imagehash_phash_dhash_per_s']:>9} {r['ratio_vs_phash_dhash']:>6} "
            f"{r['phash_identical']:>8.1%}"
        )

    result: dict[str, Any] = {
        "cpu": cpu_model(),
        "per_core": rows,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    if have_coco and not args.embeddings_only:
        result["stage"] = [
            max((bench_stage(n_coco, w) for _ in range(repeat)), key=lambda s: s["images_per_s"])
            for w in (1, 2)
        ]
        print("\nwhole stage, embeddings off, COCO sample:")
        for s in result["stage"]:
            print(
                f"  {s['workers']} worker(s): {s['images_per_s']} img/s wall "
                f"({s['images_per_s_per_worker_cpu']} img/s per worker CPU second)"
            )
    if have_coco:
        captions = [
            c for x in (COCO / "pairs.jsonl").read_text().splitlines()[:n_coco]
            for c in json.loads(x)["captions"]
        ]  # fmt: skip
        emb = bench_embeddings(coco_images(min(n_coco, 64)), captions[: 4 * 64], repeat)
        result["embeddings"] = emb
        print(f"\nembeddings, batch 64, torch eager vs the pipeline's CPU runtime ({cpu_model()}):")
        print(
            f"{'side':<6} {'encoder':<40} {'threads':>7} {'runtime':<12} {'torch/s':>8} "
            f"{'ours/s':>8} {'ratio':>6} {'min cos':>9}"
        )
        for r in emb:
            print(
                f"{r['kind']:<6} {r['encoder']:<40} {r['threads']:>7} {r['runtime']:<12} "
                f"{r['torch_eager_per_s']:>8} {r['ours_per_s']:>8} "
                f"{r['ratio_vs_torch_eager']:>5}x {r['min_cosine_vs_torch']:>9.6f}"
            )
        print("targets: image >= 2.5x, text >= 2x, cosine >= 0.9999")
        print("\ntext, linear layers' fp32 GFLOP/s against a float32 GEMM of the model's shape:")
        for r in emb:
            if r["kind"] == "text":
                print(
                    f"  {r['threads']} thread(s): torch eager {r['torch_eager_gflops']}, ours "
                    f"{r['ours_gflops']}, SGEMM {r['sgemm_gflops']} -> at most "
                    f"{r['sgemm_gflops'] / r['torch_eager_gflops']:.2f}x torch in fp32 "
                    f"({r['tokens']} tokens, {r['tokens_padded']} with padding)"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
