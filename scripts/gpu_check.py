"""One prepared check that training runs on CUDA with bf16 autocast, and how fast.

    python scripts/gpu_check.py results/gpu_check.json              # on a GPU machine (~1-2 min)
    python scripts/gpu_check.py out.json --device cpu --quick       # the same code path, on a CPU

Needs no data files: it generates synthetic paired embeddings with label structure of the
default encoders' widths (1280-d image, 384-d text, 24 labels, like MIRFlickr-25K) and, for both
methods (dcmh, contrastive) at 64 bits, trains with :func:`cmrops.models.fit` - the loop of
``cmrops train`` - on the requested device, then checks:

* the device really is CUDA (unless ``--device cpu``) and the heads run in bf16 under the loop's
  autocast (a forward pass's output dtype);
* the training loss decreases (last epoch's mean below the first's);
* the validation mAP beats random codes by a margin (0.15);
* samples/s on the device, and on the CPU for a few epochs of the same model, and their ratio.

Writes everything (device name, torch and CUDA versions, per method: samples/s on both devices,
speedup, losses, mAP, steps, seconds) as JSON to the path given, and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic

import numpy as np
import torch

from cmrops import pack_bits
from cmrops.models import HasherConfig, TrainConfig, encode, fit
from cmrops.models.ranking import cross_modal_map
from cmrops.models.synthetic import subset, synthetic_pairs

MARGIN = 0.15


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="JSON results file")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    ap.add_argument("--quick", action="store_true", help="small data, few epochs (a smoke run)")
    ap.add_argument("--bits", type=int, default=64)
    args = ap.parse_args()

    n, epochs, cpu_epochs, batch = (2000, 3, 1, 128) if args.quick else (40000, 12, 1, 512)
    from cmrops.encoders import resolve_device

    device = resolve_device(args.device)
    report: dict = {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16_supported": bool(device == "cuda" and torch.cuda.is_bf16_supported()),
        "quick": args.quick,
        "samples": n,
        "epochs": epochs,
        "batch_size": batch,
        "bits": args.bits,
        "checks": {},
        "methods": {},
    }
    ok = True

    def check(name: str, passed: bool, detail: object) -> None:
        nonlocal ok
        ok &= bool(passed)
        report["checks"][name] = {"passed": bool(passed), "detail": detail}
        print(f"[{'ok' if passed else 'FAIL'}] {name}: {detail}")

    if args.device == "cuda":
        check("device is cuda", device == "cuda" and torch.cuda.is_available(), device)

    data = synthetic_pairs(n, n_labels=24, image_dim=1280, text_dim=384, noise=1.0, seed=0)
    n_train, n_val = int(n * 0.8), int(n * 0.05)
    train = subset(data, np.arange(n_train))
    val = subset(data, np.arange(n_train, n_train + n_val))
    query = subset(data, np.arange(n_train + n_val, n))
    model_cfg = HasherConfig(1280, 384, args.bits)

    # bf16 autocast: what the loop wraps its forward pass in on CUDA.
    if device == "cuda":
        from cmrops.models.hasher import CrossModalHasher

        m = CrossModalHasher(model_cfg).to(device)
        x = torch.from_numpy(train.image[:8]).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            dtype = m.image.net[0](x).dtype
        check("autocast runs the heads in bf16", dtype == torch.bfloat16, str(dtype))

    rng = np.random.default_rng(1)
    for method in ("dcmh", "contrastive"):
        cfg = TrainConfig(method, epochs=epochs, batch_size=batch, patience=0, checkpoint_every=0)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            r = fit(model_cfg, cfg, train, val, Path(tmp) / "m", device=device, progress=False)
            seconds = time.perf_counter() - t0
            qi, qt = (pack_bits(x > 0) for x in encode(r.model, query))
            di, dt = (pack_bits(x > 0) for x in encode(r.model, train))
            learned = cross_modal_map(qi, qt, di, dt, query.labels, train.labels)["map"]
        rand = [pack_bits(rng.random((len(x), args.bits)) < 0.5) for x in (qi, qt, di, dt)]
        baseline = cross_modal_map(*rand, query.labels, train.labels)["map"]
        cpu_cfg = TrainConfig(
            method, epochs=cpu_epochs, batch_size=batch, patience=0, checkpoint_every=0
        )  # type: ignore[arg-type]
        cpu_train = subset(train, np.arange(min(len(train), 8 * batch)))
        with tempfile.TemporaryDirectory() as tmp:
            cpu = fit(
                model_cfg, cpu_cfg, cpu_train, None, Path(tmp) / "c", device="cpu", progress=False
            )
        first, last = r.history[0]["loss"], r.history[-1]["loss"]
        entry = {
            "samples_per_s": round(r.samples_per_s, 1),
            "cpu_samples_per_s": round(cpu.samples_per_s, 1),
            "speedup_vs_cpu": round(r.samples_per_s / cpu.samples_per_s, 2),
            "steps": r.steps,
            "seconds": round(seconds, 2),
            "loss_first_epoch": first,
            "loss_last_epoch": last,
            "best_val_map": r.best_val_map,
            "test_map": learned,
            "random_codes_map": baseline,
        }
        report["methods"][method] = entry
        print(f"{method}: {entry}")
        check(f"{method}: loss decreases", last < first, f"{first:.4f} -> {last:.4f}")
        check(
            f"{method}: mAP beats random codes by {MARGIN}",
            learned >= baseline + MARGIN,
            f"{learned:.4f} vs {baseline:.4f}",
        )

    report["ok"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'}; results in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
