"""Training throughput of the train stage's loop on the CPU, in one process.

    .venv/bin/python benches/bench_train.py            # 4,096 samples, 3 epochs per model
    .venv/bin/python benches/bench_train.py --quick    # 1,024 samples, 1 epoch (a smoke run)

**Data.** Synthetic paired embeddings with label structure
(:func:`cmrops.models.synthetic.synthetic_pairs`) of the default encoders' widths: 1280-d image
(EfficientNet-Lite0) and 384-d text (MiniLM), 24 labels (MIRFlickr-25K has 24).

**Model and loop.** Exactly what ``cmrops train`` runs with the default params (one hidden layer
of 1024 per modality, batch 128, AdamW, gradient clipping, no validation set and no
intermediate checkpoint so that only optimisation is timed): :func:`cmrops.models.fit`, whose
``samples_per_s`` counts the training samples of every optimiser step over the wall time of the
steps. After one warm-up run, each model is trained for ``--epochs`` epochs; the figure is the
best of ``--repeat`` runs.

**Baseline.** The ratio column compares every row with ``dcmh-64`` (the supervised method at the
usual code length). Torch threads: torch's default (``torch.get_num_threads()``, printed).
Results also go to ``bench-results/train.json``.

**Method quality** (``--quality``): every method of :data:`cmrops.methods.CATALOGUE` at each bit
length on synthetic pairs of the main job's shape (``--n`` training pairs, default 1,700, 24
labels, noise 2, 1280/384-d; 200 validation pairs for model selection, 400 held-out queries
retrieving from the training pairs), with the train stage's default settings (50 epochs,
patience 10, heads 1024 wide): test mAP image→text and text→image (tie-aware, relevance =
sharing a label), the mAP of random codes, and the wall time of each fit (closed-form: the
solve; deep: the whole loop with validation). Results go to ``bench-results/train_methods.json``.

    .venv/bin/python benches/bench_train.py --quality              # all methods, 16/32/64/128
    .venv/bin/python benches/bench_train.py --quality --methods itq cca cmfh
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from cmrops.models import HasherConfig, TrainConfig, fit
from cmrops.models.synthetic import synthetic_pairs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="training samples")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 64, 128])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="1,024 samples, 1 epoch, 1 run")
    ap.add_argument("--out", default="bench-results/train.json")
    ap.add_argument("--quality", action="store_true", help="mAP and fit time of every method")
    ap.add_argument("--methods", nargs="+", default=None, help="with --quality: these only")
    args = ap.parse_args()
    if args.quality:
        return quality(args)
    if args.quick:
        args.n, args.epochs, args.repeat = 1024, 1, 1

    data = synthetic_pairs(args.n, n_labels=24, image_dim=1280, text_dim=384, seed=0)
    rows = []
    print(
        f"training throughput on cpu ({torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}): {args.n} samples x {args.epochs} "
        f"epochs, batch {args.batch_size}, heads 1280/384 -> 1024 -> bits, best of {args.repeat}"
    )
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: thread pools, kernels, allocator
        warm = TrainConfig("dcmh", epochs=1, batch_size=args.batch_size, checkpoint_every=0)
        fit(
            HasherConfig(1280, 384, 64),
            warm,
            data,
            None,
            Path(tmp) / "w",
            device="cpu",
            progress=False,
        )
    for method in ("dcmh", "contrastive"):
        for bits in args.bits:
            best = 0.0
            for _ in range(args.repeat):
                with tempfile.TemporaryDirectory() as tmp:
                    r = fit(
                        HasherConfig(1280, 384, bits),
                        TrainConfig(
                            method,
                            epochs=args.epochs,
                            batch_size=args.batch_size,
                            checkpoint_every=0,
                        ),  # type: ignore[arg-type]
                        data,
                        None,
                        Path(tmp) / "m",
                        device="cpu",
                        progress=False,
                    )
                best = max(best, r.samples_per_s)
            rows.append(
                {"model": f"{method}-{bits}", "samples_per_s": round(best, 1), "steps": r.steps}
            )
    base = next(
        (r["samples_per_s"] for r in rows if r["model"] == "dcmh-64"), rows[0]["samples_per_s"]
    )
    print(f"{'model':<16} {'samples/s':>10} {'steps':>6} {'vs dcmh-64':>11}")
    for r in rows:
        r["ratio_vs_dcmh_64"] = round(r["samples_per_s"] / base, 3)
        print(
            f"{r['model']:<16} {r['samples_per_s']:>10.0f} {r['steps']:>6} "
            f"{r['ratio_vs_dcmh_64']:>10.2f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "device": "cpu",
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "n": args.n,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


def quality(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from cmrops import pack_bits
    from cmrops.methods import METHODS, info
    from cmrops.models import encode
    from cmrops.models.ranking import cross_modal_map
    from cmrops.models.synthetic import subset

    n = 1700 if args.n == 4096 else args.n  # the main job's training set by default
    bits_list = [16, 32, 64, 128] if args.bits == [16, 64, 128] else args.bits
    d = synthetic_pairs(n + 600, n_labels=24, image_dim=1280, text_dim=384, noise=2.0, seed=0)
    train, val, query = (
        subset(d, np.arange(n)),
        subset(d, np.arange(n, n + 200)),
        subset(d, np.arange(n + 200, n + 600)),
    )
    print(
        f"method quality on synthetic pairs: {n} train / 200 val / 400 query, 24 labels, "
        f"1280/384-d, {torch.get_num_threads()} torch threads"
    )
    head = ("model", "i2t", "t2i", "val", "random", "seconds", "steps")
    print(f"{head[0]:<16} " + " ".join(f"{h:>7}" for h in head[1:]))
    rows = []
    rng = np.random.default_rng(0)
    for method in args.methods or METHODS:
        for bits in bits_list:
            cfg = TrainConfig(method)  # type: ignore[arg-type]
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                r = fit(HasherConfig(1280, 384, bits), cfg, train, val, Path(tmp) / "m",
                        device="cpu", progress=False)  # fmt: skip
                seconds = time.perf_counter() - t0
            qi, qt = (pack_bits(x > 0) for x in encode(r.model, query))
            di, dt = (pack_bits(x > 0) for x in encode(r.model, train))
            s = cross_modal_map(qi, qt, di, dt, query.labels, train.labels)
            rand = cross_modal_map(
                *(pack_bits(rng.random((len(x), bits)) < 0.5) for x in (qi, qt, di, dt)),
                query.labels,
                train.labels,
            )["map"]
            row = {
                "model": f"{method}-{bits}",
                "kind": info(method).kind,
                "i2t": round(s["i2t"], 4),
                "t2i": round(s["t2i"], 4),
                "val_map": round(r.best_val_map or 0.0, 4),
                "random_map": round(rand, 4),
                "seconds": round(seconds, 2),
                "steps": r.steps,
            }
            rows.append(row)
            print(
                f"{row['model']:<16} {row['i2t']:>7.3f} {row['t2i']:>7.3f} {row['val_map']:>7.3f} "
                f"{rand:>7.3f} {seconds:>7.1f} {r.steps:>7}",
                flush=True,
            )
    # The aligned float baseline as the train stage fits it: an alignment on the training pairs
    # (align: defaults), cosine ranking - what the 64-bit codes are measured against.
    from cmrops.align import AlignParams, fit_alignment
    from cmrops.metrics import cosine_metrics

    t0 = time.perf_counter()
    alignment, _ = fit_alignment(train.image, train.text, AlignParams(), progress=False)
    seconds = time.perf_counter() - t0
    zq = alignment.image(query.image), alignment.text(query.text)
    zd = alignment.image(train.image), alignment.text(train.text)
    base = {
        "i2t": round(float(cosine_metrics(zq[0], zd[1], query.labels, train.labels).ap.mean()), 4),
        "t2i": round(float(cosine_metrics(zq[1], zd[0], query.labels, train.labels).ap.mean()), 4),
    }
    print(f"{'aligned-float':<16} {base['i2t']:>7.3f} {base['t2i']:>7.3f} {'':>7} {'':>7} "
          f"{seconds:>7.1f}   (cosine, {alignment.dim}-d)")  # fmt: skip
    for row in rows:
        row["vs_float_baseline"] = {d: round(row[d] / base[d], 4) for d in ("i2t", "t2i")}
        if row["model"].endswith("-64"):
            v = row["vs_float_baseline"]
            print(f"  {row['model']} / aligned float: {v['i2t']:.1%} I->T, {v['t2i']:.1%} T->I")
    rows.append({"model": "aligned-float", "kind": "float_baseline", **base,
                 "seconds": round(seconds, 2)})  # fmt: skip
    out = Path(args.out).with_name("train_methods.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n_train": n, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
