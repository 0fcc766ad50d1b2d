"""One prepared check that training runs on CUDA with bf16 autocast, and how fast.

    python scripts/gpu_check.py results/gpu_check.json              # on a GPU machine (~1.5 min)
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

Then (unless ``--no-finetune``) end-to-end fine-tuning (``train.finetune_encoder``): a CLIP with
ViT-B/32's shapes (random weights, generated on the spot: no hub is reachable) trained with its
last two blocks per tower on synthetic pictures and captions (:func:`synthetic_images`), with the
same checks (bf16 reaching the encoder, loss, mAP margin) and samples/s on the device and CPU.

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
from typing import Any

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
    ap.add_argument("--no-finetune", action="store_true", help="skip the CLIP fine-tuning part")
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

    if not args.no_finetune:
        report["finetune"] = finetune_check(device, args.quick, args.bits, check)

    report["ok"] = ok
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'all checks passed' if ok else 'SOME CHECKS FAILED'}; results in {out}")
    return 0 if ok else 1


def finetune_check(device: str, quick: bool, bits: int, check: Any) -> dict[str, Any]:
    """End-to-end fine-tuning (train.finetune_encoder) of a CLIP with ViT-B/32's shapes (random
    weights: no hub here) on synthetic pictures and captions: the loop's bf16 autocast reaches
    the encoder, the loss falls, codes beat random ones, and samples/s on the device and CPU."""
    from cmrops.models.finetune import EncoderHasher, tokenize_captions, weights_sha256
    from cmrops.models.loop import PairedData
    from cmrops.models.synthetic import synthetic_images
    from tests.tiny_models import tiny_clip

    if quick:
        size, n, epochs, batch = 64, 384, 6, 32
        shape: dict[str, int] = dict(width=64, layers=2, heads=2, patch=16, projection=32)
    else:  # ViT-B/32: vision 768 x 12 (patch 32, 224 px), text 512 x 12, projection 512
        size, n, epochs, batch = 224, 8192, 4, 256
        shape = dict(width=768, layers=12, heads=12, patch=32, text_width=512, text_heads=8,
                     projection=512)  # fmt: skip
    entry: dict[str, Any] = {"image_size": size, "samples": n, "epochs": epochs, "batch": batch,
                             "architecture": shape}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        clip = tiny_clip(Path(tmp) / "clip", image_size=size, **shape)
        images, captions, labels = synthetic_images(n + n // 8, size, seed=0)
        tokens = tokenize_captions(clip, captions)
        # one class per (colour, thing): relevance is the whole caption, random codes ~ 1/6
        combo = labels[:, :2].argmax(1) * 3 + labels[:, 2:].argmax(1)
        data = PairedData(images, tokens, np.eye(6, dtype=bool)[combo])
        train, query = subset(data, np.arange(n)), subset(data, np.arange(n, len(labels)))
        dim = shape["projection"]
        model_cfg = HasherConfig(
            dim, dim, bits, (1024,), 0.1, encoder=str(clip), encoder_layers=2,
            encoder_sha256=weights_sha256(str(clip)),
        )  # fmt: skip
        m = EncoderHasher(model_cfg)
        entry["parameters"] = sum(p.numel() for p in m.parameters())
        entry["trained_parameters"] = sum(p.numel() for p in m.parameters() if p.requires_grad)
        if device == "cuda":
            m = m.to(device)
            x = torch.from_numpy(train.image[:4]).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                feats = m.encoder.get_image_features(pixel_values=x.permute(0, 3, 1, 2).float())
            dtype = getattr(feats, "pooler_output", feats).dtype
            check("autocast runs the encoder in bf16", dtype == torch.bfloat16, str(dtype))
        del m
        cfg = TrainConfig("dcmh", epochs=epochs, batch_size=batch, lr=1e-3, encoder_lr=1e-5,
                          patience=0, checkpoint_every=0)  # fmt: skip
        t0 = time.perf_counter()
        r = fit(model_cfg, cfg, train, None, Path(tmp) / "m", device=device, progress=False)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        qi, qt = (pack_bits(x > 0) for x in encode(r.model, query))
        di, dt = (pack_bits(x > 0) for x in encode(r.model, train))
        learned = cross_modal_map(qi, qt, di, dt, query.labels, train.labels)["map"]
        rng = np.random.default_rng(1)
        rand = [pack_bits(rng.random((len(x), bits)) < 0.5) for x in (qi, qt, di, dt)]
        baseline = cross_modal_map(*rand, query.labels, train.labels)["map"]
        first, last, samples_per_s = r.history[0]["loss"], r.history[-1]["loss"], r.samples_per_s
        del r
        cpu_cfg = TrainConfig("dcmh", epochs=1, batch_size=min(batch, 32), patience=0,
                              checkpoint_every=0)  # fmt: skip
        cpu_train = subset(train, np.arange(min(n, 4 * cpu_cfg.batch_size)))
        cpu = fit(model_cfg, cpu_cfg, cpu_train, None, Path(tmp) / "c", device="cpu",
                  progress=False)  # fmt: skip
    entry.update(
        samples_per_s=round(samples_per_s, 1),
        cpu_samples_per_s=round(cpu.samples_per_s, 1),
        speedup_vs_cpu=round(samples_per_s / max(cpu.samples_per_s, 1e-9), 2),
        loss_first_epoch=first,
        loss_last_epoch=last,
        test_map=learned,
        random_codes_map=baseline,
    )
    print(f"finetune: {entry}")
    check("finetune: loss decreases", last < first, f"{first:.4f} -> {last:.4f}")
    check(
        f"finetune: mAP beats random codes by {MARGIN}",
        learned >= baseline + MARGIN,
        f"{learned:.4f} vs {baseline:.4f}",
    )
    return entry


if __name__ == "__main__":
    sys.exit(main())
