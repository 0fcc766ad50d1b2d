"""The zero-pair prior against the learned alignment, by number of training pairs.

    .venv/bin/python benches/bench_align_prior.py                 # COCO sample + synthetic set
    .venv/bin/python benches/bench_align_prior.py --quick         # fewer pair counts, one draw
    .venv/bin/python benches/bench_align_prior.py --only coco

For each data set and each number of training pairs (0, 50, 100, 200, 400, all) three
alignments are measured on the same held-out test pairs (never trained on, never used to choose
anything):

* **prior** - the concept bridge (:mod:`cmrops.align.concept`, ConSE): EfficientNet-Lite0's
  ImageNet probabilities -> the text embeddings of the top classes' names and descriptions;
  it uses no pair (its centring uses the unpaired images and captions of the whole set);
* **learned** - heads trained on the pairs (:func:`cmrops.align.fit_alignment`, the baseline:
  what the align stage did before);
* **fused** - the two fused at the prior weight the out-of-fold models choose
  (:func:`cmrops.align.crossfit.fit_fused`, what ``align.kind: auto`` now does). COCO's
  training pairs are captions, five per photo: the folds keep a photo's pairs together
  (``groups``), as the pipeline's one pair per photo does by construction - a fold model that
  saw a held-out caption's photo made the learned part look better than on new photos and
  pulled the prior's weight down (measured before: fused below the prior at 200 and 395
  pairs).

Metrics: R@1/5/10 and the median rank, image -> text and text -> image, and the mismatch AUROC
(true pairs against the same images with other test samples' captions). ``r_mean`` is the mean
of the six R@K; the target is ``fused r_mean >= max(prior, learned)`` at every pair count.
With fewer pairs than all, the training pairs are drawn ``--draws`` times (seeded) and the
metrics averaged.

**COCO sample** (``$CMROPS_SHARED_DATA/coco_mini``, 159 photos x 5 captions): the 80 train2017
photos give the training pairs (one pair per caption: 400 in all), the 79 val2017 photos are the
test set, each caption a query of its own (the Karpathy protocol: text -> image ranks 79
photos for each of 395 captions; image -> text ranks the 395 captions and counts a photo's
best-ranked own caption). **Synthetic set** (the default collect source, 2,000 rendered scenes
with planted defects): 500 samples without a planted defect are the test set (pooled captions),
the rest (defects included, as in real data) the training pool.

Timings are not the point here (a fit takes seconds to minutes on a busy CPU); the CPU model is
printed with the results, which also go to ``benches/results/align_prior.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cmrops import io
from cmrops.align import AlignParams, fit_alignment
from cmrops.align.concept import ConceptParams, build_concept_alignment
from cmrops.align.crossfit import fit_fused
from cmrops.align.metrics import auroc, derangement
from cmrops.align.model import Alignment
from cmrops.threads import cpu_model

REPO = Path(__file__).resolve().parents[1]
COUNTS = (0, 50, 100, 200, 400)


# --------------------------------------------------------------------------- data


def _prepare(work: Path, sources: Any) -> Path:
    """collect + preprocess into ``work`` (reused when already there)."""
    from cmrops.stages import collect, preprocess

    if not (work / "interim" / "features" / "meta.json").is_file():
        collect.run(collect.CollectParams(sources=sources), work / "raw")
        pre = preprocess.PreprocessParams(n_workers=1, tokenizer="words")
        preprocess.run(pre, work / "raw", work / "interim")
    return work


def _interim(work: Path) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray, dict[str, Any]]:
    rows = io.read_parquet(
        work / "interim" / "samples.parquet",
        columns=["sample_id", "source_key", "captions_norm", "feature_row"],
    ).to_pylist()
    rows = sorted((r for r in rows if (r["feature_row"] or -1) >= 0), key=lambda r: r["sample_id"])
    image = np.load(work / "interim" / "features" / "image.npy")
    text = np.load(work / "interim" / "features" / "text.npy")
    meta = json.loads((work / "interim" / "features" / "meta.json").read_text())
    return rows, image, text, meta


class Dataset:
    """Training pool and test set of one data set (see module docstring)."""

    def __init__(
        self,
        name: str,
        train_image: np.ndarray,
        train_text: np.ndarray,
        test_image: np.ndarray,
        test_text: np.ndarray,
        test_owner: np.ndarray,
        train_group: np.ndarray,
        all_image: np.ndarray,
        all_text: np.ndarray,
        encoders: tuple[str, str],
    ) -> None:
        self.name = name
        self.train_image, self.train_text = train_image, train_text
        self.test_image, self.test_text, self.test_owner = test_image, test_text, test_owner
        self.train_group = train_group  # the image of each training pair
        self.all_image, self.all_text = all_image, all_text
        self.encoders = encoders


def coco(shared: Path, work: Path) -> Dataset:
    from cmrops.encoders import load_text_encoder
    from cmrops.stages import collect

    spec = collect.SourceSpec(
        name="coco", kind="manifest", path=str(shared / "coco_mini" / "pairs.jsonl"),
        labels_column="no_labels",
    )  # fmt: skip
    rows, image, _, meta = _interim(_prepare(work, (spec,)))
    caps, owner = [], []
    for i, r in enumerate(rows):
        for c in r["captions_norm"]:
            caps.append(c)
            owner.append(i)
    cached = work / "caption_embeddings.npy"  # one row per caption, in this order
    if cached.is_file() and len(np.load(cached)) == len(caps):
        cap_emb = np.load(cached)
    else:
        enc = load_text_encoder(meta["text"]["encoder"], device="cpu")
        cap_emb = enc.encode(caps, progress=False)
        io.write_npy(cached, cap_emb)
    owner_a = np.asarray(owner)
    img = image[[r["feature_row"] for r in rows]]
    is_train = np.array(["train2017" in r["source_key"] for r in rows])
    train_caps = np.flatnonzero(is_train[owner_a])
    test_imgs = np.flatnonzero(~is_train)
    test_caps = np.flatnonzero(~is_train[owner_a])
    remap = {int(i): k for k, i in enumerate(test_imgs)}
    return Dataset(
        "coco_mini",
        img[owner_a[train_caps]],
        cap_emb[train_caps],
        img[test_imgs],
        cap_emb[test_caps],
        np.array([remap[int(o)] for o in owner_a[test_caps]]),
        owner_a[train_caps],
        img,
        cap_emb,
        (meta["image"]["encoder"], meta["text"]["encoder"]),
    )


def synthetic(work: Path, n_test: int = 500, seed: int = 0) -> Dataset:
    from cmrops.params import load_section
    from cmrops.stages import collect

    cp = load_section(REPO / "params.yaml", "collect", collect.CollectParams)
    rows, image, text, meta = _interim(_prepare(work, cp.sources))
    truth = io.read_parquet(work / "raw" / "synthetic_truth.parquet", columns=["sample_id"])
    planted = set(truth["sample_id"].to_pylist())
    img = image[[r["feature_row"] for r in rows]]
    txt = text[[r["feature_row"] for r in rows]]
    clean = np.flatnonzero([r["sample_id"] not in planted for r in rows])
    test = np.sort(np.random.default_rng([seed, 7]).choice(clean, n_test, replace=False))
    train = np.setdiff1d(np.arange(len(rows)), test)
    return Dataset(
        "synthetic", img[train], txt[train], img[test], txt[test], np.arange(n_test),
        np.arange(len(train)), img, txt,
        (meta["image"]["encoder"], meta["text"]["encoder"]),
    )  # fmt: skip


# --------------------------------------------------------------------------- metrics


def measure(a: Alignment, d: Dataset) -> dict[str, Any]:
    zi = a.image(d.test_image).astype(np.float64)
    zt = a.text(d.test_text).astype(np.float64)
    sim = zt @ zi.T  # (captions, images)
    own = sim[np.arange(len(zt)), d.test_owner]
    t2i = (sim > own[:, None]).sum(axis=1) + 1
    # image -> text: the best-ranked own caption of each image
    by_img = sim.T  # (images, captions)
    i2t = np.empty(len(zi))
    for i in range(len(zi)):
        mine = d.test_owner == i
        best = by_img[i, mine].max()
        i2t[i] = (by_img[i] > best).sum() + 1
    out: dict[str, Any] = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = float((ranks <= k).mean())
        out[f"{name}_median_rank"] = float(np.median(ranks))
    out["r_mean"] = float(np.mean([out[f"{n}_r{k}"] for n in ("i2t", "t2i") for k in (1, 5, 10)]))
    # mismatch AUROC: each caption with its own image vs with another test image
    other = derangement(len(zi), 11)[d.test_owner]
    true = np.einsum("ij,ij->i", zt, zi[d.test_owner])
    swapped = np.einsum("ij,ij->i", zt, zi[other])
    out["mismatch_auroc"] = auroc(true, swapped)
    return out


def _mean(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: round(float(np.mean([r[k] for r in results])), 4) for k in results[0]}


def run_dataset(d: Dataset, counts: list[int | str], draws: int, params: AlignParams) -> dict:
    prior = build_concept_alignment(
        *d.encoders, ConceptParams(), image=d.all_image, text=d.all_text
    )
    base = measure(prior, d)
    rows: dict[str, Any] = {}
    n_all = len(d.train_image)
    for count in counts:
        n = n_all if count == "all" else int(count)
        if n > n_all:
            continue
        t0 = time.perf_counter()
        if n == 0:
            rows["0"] = {"pairs": 0, "prior": base, "learned": None, "fused": base,
                         "prior_weight": 1.0}  # fmt: skip
            print(f"  {d.name:<10} {0:>5} pairs  prior r_mean {base['r_mean']:.3f}  "
                  f"AUROC {base['mismatch_auroc']:.3f}  (learned: no pairs)")  # fmt: skip
            continue
        learned_r, fused_r, weights = [], [], []
        for draw in range(1 if n == n_all else draws):
            rows_ = np.sort(np.random.default_rng([draw, n]).permutation(n_all)[:n])
            x, y = d.train_image[rows_], d.train_text[rows_]
            learned, _ = fit_alignment(x, y, params, progress=False)
            fit = fit_fused(x, y, prior, params, groups=d.train_group[rows_])
            learned_r.append(measure(learned, d))
            fused_r.append(measure(fit.alignment, d))
            weights.append(fit.fusion["prior_weight"])
        key = "all" if n == n_all else str(n)
        rows[key] = {
            "pairs": n,
            "draws": len(learned_r),
            "prior": base,
            "learned": _mean(learned_r),
            "fused": _mean(fused_r),
            "prior_weight": round(float(np.mean(weights)), 4),
            "prior_weights": weights,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        r = rows[key]
        best = max(r["prior"]["r_mean"], r["learned"]["r_mean"])
        r["fused_ge_best"] = bool(r["fused"]["r_mean"] >= best - 1e-9)
        print(
            f"  {d.name:<10} {n:>5} pairs  r_mean prior {r['prior']['r_mean']:.3f} learned "
            f"{r['learned']['r_mean']:.3f} fused {r['fused']['r_mean']:.3f} "
            f"(w {r['prior_weight']:.2f}) "
            f"| AUROC {r['prior']['mismatch_auroc']:.3f} / {r['learned']['mismatch_auroc']:.3f} / "
            f"{r['fused']['mismatch_auroc']:.3f}  {'ok' if r['fused_ge_best'] else 'BELOW'}"
        )
    return {
        "train_pool": n_all,
        "test_images": len(d.test_image),
        "test_captions": len(d.test_text),
        "by_pairs": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="pair counts 0, 100, all; one draw")
    ap.add_argument("--draws", type=int, default=3, help="draws of the training pairs per count")
    ap.add_argument("--only", choices=["coco", "synthetic"], default=None)
    ap.add_argument("--counts", default=None, help="pair counts, e.g. 0,50,all (default: all)")
    ap.add_argument("--work", default=str(REPO / "bench-results" / "align_prior"))
    ap.add_argument("--out", default=str(REPO / "benches" / "results" / "align_prior.json"))
    args = ap.parse_args()
    shared = Path(os.environ.get("CMROPS_SHARED_DATA", REPO.parent / "shared" / "data"))
    counts: list[int | str] = [0, 100, "all"] if args.quick else [*COUNTS, "all"]
    if args.counts:
        counts = [c if c == "all" else int(c) for c in args.counts.split(",")]
    draws = 1 if args.quick else args.draws
    params = AlignParams()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); align params: defaults")
    print("baseline: learned heads alone; prior: concept bridge; fused: what align.kind auto does")
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "params": params.to_dict(),
        "concept": ConceptParams().to_dict(),
        "draws": draws,
        "datasets": {},
    }
    work = Path(args.work)
    if args.only in (None, "coco"):
        out["datasets"]["coco_mini"] = run_dataset(
            coco(shared, work / "coco"), counts, draws, params
        )
    if args.only in (None, "synthetic"):
        d = synthetic(work / "synthetic")
        out["datasets"]["synthetic"] = run_dataset(d, counts, draws, params)
    ok = all(r.get("fused_ge_best", True) for ds in out["datasets"].values()
             for r in ds["by_pairs"].values())  # fmt: skip
    out["target_met"] = ok
    print(f"target (fused >= better of prior and learned at every pair count): {ok}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
