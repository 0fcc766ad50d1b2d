"""Stand-in files in the published layouts of the standard cross-modal hashing benchmarks.

The real feature files are not redistributable here and nothing is downloaded, so tests and
``benches/bench_benchmarks.py`` import files that have exactly the names, shapes, dtypes and
split sizes of the published ones, filled with seeded, class-structured random features. Numbers
measured on them say the pipeline runs; they are **not comparable** with published mAPs.

**Wikipedia** (Rasiwasia et al., ACM MM 2010: 2,866 image-text pairs of 10 categories; the
hashing protocol trains on 2,173 and queries with 693, the database being the training set):

* ``layout="hashing"`` - ``wikiData.mat`` as the hashing code releases (SePH, CMFH, ...) load
  it: ``I_tr`` (2173, 128) float64 SIFT bag-of-visual-words histograms, ``T_tr`` (2173, 10)
  float64 LDA topic proportions, ``L_tr`` (2173, 1) float64 category 1..10, and ``I_te``,
  ``T_te``, ``L_te`` with 693 rows;
* ``layout="original"`` - the release's ``raw_features.mat`` (``I_tr``, ``T_tr``, ``I_te``,
  ``T_te``, no labels) with ``trainset_txt_img_cat.list`` / ``testset_txt_img_cat.list``
  (``<text id>\\t<image id>\\t<category>`` per row, the ids 32 hex characters);
* ``layout="deep"`` - ``wiki_deep_doc2vec_data_corr_ae.h5py`` (ACMR/DSCMR/UCCH-style loaders):
  ``train_imgs_deep`` (2173, 4096) float32 VGG features, ``train_text`` (2173, 300) float32
  doc2vec, ``train_imgs_labels`` / ``train_texts_labels`` (2173,) int64 0..9, and ``test_*``
  with 693 rows.

**MIRFlickr-25K, DCMH layout** (Jiang & Li, CVPR 2017: 20,015 pairs with a tag and a label, 24
labels; query 2,000, training 10,000 of the rest): one variable per file,
``mirflickr25k-lall.mat`` ``LAll`` (20015, 24), ``mirflickr25k-yall.mat`` ``YAll`` (20015, 1386)
bag-of-tags, and - since DCMH's ``mirflickr25k-iall.mat`` holds raw 224x224 pixels, which the
importer refuses - the VGG-feature file UCCH releases, ``mirflickr25k-iall-vgg.mat`` ``XAll``
(20015, 4096). ``LAll``/``YAll`` are written as uint8 0/1 (the values are 0/1; the dtype of the
real files is not asserted), ``XAll`` as float32; ``image_dim`` may be lowered for speed.

**MIRFlickr-25K, original release**: ``mirflickr/im<N>.jpg`` (N = 1..25000),
``mirflickr/meta/tags/tags<N>.txt`` (one tag a line) and the annotation folder
``mirflickr25k_annotations_v080/`` with ``<concept>.txt`` (the 24 "potential" labels, wide
sense) and ``<concept>_r1.txt`` (the 14 concepts also annotated as salient), each listing image
numbers one a line - read by the label stage's ``mirflickr`` manual format
(:mod:`cmrops.labels.manual`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np

WIKI_TRAIN, WIKI_QUERY, WIKI_CLASSES = 2173, 693, 10
WIKI_CATEGORIES = (
    "art", "biology", "geography", "history", "literature",
    "media", "music", "royalty", "sport", "warfare",
)  # fmt: skip
MIRFLICKR_ROWS, MIRFLICKR_TAGS = 20015, 1386
#: The 24 concepts of the MIRFlickr-25K annotations (``<concept>.txt``), in file-name order.
MIRFLICKR_CONCEPTS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)  # fmt: skip
#: The 14 concepts that also have a ``<concept>_r1.txt`` (salient) list.
MIRFLICKR_R1 = (
    "baby", "bird", "car", "clouds", "dog", "female", "flower", "male", "night", "people",
    "portrait", "river", "sea", "tree",
)  # fmt: skip
WikiLayout = Literal["hashing", "original", "deep"]


def _wiki_arrays(
    seed: int, image_dim: int, text_dim: int, deep: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category ids (1..10) and class-structured image / text features for 2,866 pairs."""
    rng = np.random.default_rng(seed)
    n = WIKI_TRAIN + WIKI_QUERY
    cls = rng.integers(0, WIKI_CLASSES, n)
    if deep:  # dense, signed activations around a class centre
        image = rng.standard_normal((WIKI_CLASSES, image_dim))[cls] + 2.0 * rng.standard_normal(
            (n, image_dim)
        )
        text = rng.standard_normal((WIKI_CLASSES, text_dim))[cls] + 1.5 * rng.standard_normal(
            (n, text_dim)
        )
        return cls + 1, np.maximum(image, 0).astype(np.float32), text.astype(np.float32)
    # SIFT BoVW: word counts of 200-400 descriptors drawn from a class-tilted vocabulary
    tilt = rng.gamma(0.6, 1.0, (WIKI_CLASSES, image_dim)) + 0.3
    p_img = tilt[cls] * rng.gamma(2.0, 0.5, (n, image_dim))
    p_img /= p_img.sum(axis=1, keepdims=True)
    counts = np.stack(
        [rng.multinomial(int(k), p) for k, p in zip(rng.integers(200, 400, n), p_img, strict=True)]
    )
    image = counts / counts.sum(axis=1, keepdims=True)
    # LDA: topic proportions, the category's topic favoured
    alpha = np.full((n, text_dim), 0.3)
    alpha[np.arange(n), cls % text_dim] += 1.2
    text = np.stack([rng.dirichlet(a) for a in alpha])
    return cls + 1, image.astype(np.float64), text.astype(np.float64)


def write_wikipedia(
    out_dir: str | Path,
    layout: WikiLayout = "hashing",
    *,
    seed: int = 0,
    image_dim: int | None = None,
    text_dim: int | None = None,
) -> list[Path]:
    """Write a Wikipedia stand-in in ``layout`` under ``out_dir`` (see module docstring); returns
    the files to give :func:`cmrops.benchmarks_data.import_benchmark`. ``image_dim`` /
    ``text_dim`` default to the published widths (128 / 10, deep 4096 / 300)."""
    import scipy.io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deep = layout == "deep"
    idim = image_dim or (4096 if deep else 128)
    tdim = text_dim or (300 if deep else 10)
    cls, image, text = _wiki_arrays(seed, idim, tdim, deep)
    tr, te = slice(0, WIKI_TRAIN), slice(WIKI_TRAIN, None)
    if layout == "hashing":
        f = out / "wikiData.mat"
        labels = cls.astype(np.float64)[:, None]
        scipy.io.savemat(
            f,
            {"I_tr": image[tr], "T_tr": text[tr], "L_tr": labels[tr],
             "I_te": image[te], "T_te": text[te], "L_te": labels[te]},
        )  # fmt: skip
        return [f]
    if layout == "original":
        f = out / "raw_features.mat"
        scipy.io.savemat(
            f, {"I_tr": image[tr], "T_tr": text[tr], "I_te": image[te], "T_te": text[te]}
        )
        lists = []
        for name, rows in (
            ("trainset", range(WIKI_TRAIN)),
            ("testset", range(WIKI_TRAIN, len(cls))),
        ):
            path = out / f"{name}_txt_img_cat.list"
            lines = []
            for r in rows:
                t = hashlib.md5(f"text{seed}/{r}".encode()).hexdigest()
                i = hashlib.md5(f"image{seed}/{r}".encode()).hexdigest()
                lines.append(f"{t}\t{i}\t{cls[r]}\n")
            path.write_text("".join(lines), encoding="utf-8")
            lists.append(path)
        return [f, *lists]
    if layout == "deep":
        import h5py

        f = out / "wiki_deep_doc2vec_data_corr_ae.h5py"
        labels = (cls - 1).astype(np.int64)
        with h5py.File(f, "w") as h:
            for part, rows in (("train", tr), ("test", te)):
                h[f"{part}_imgs_deep"] = image[rows]
                h[f"{part}_imgs_labels"] = labels[rows]
                h[f"{part}_text"] = text[rows]
                h[f"{part}_texts_labels"] = labels[rows]
        return [f]
    raise ValueError(f"layout: {layout!r} is none of hashing, original, deep")


def write_mirflickr_dcmh(
    out_dir: str | Path,
    *,
    rows: int = MIRFLICKR_ROWS,
    image_dim: int = 4096,
    text_dim: int = MIRFLICKR_TAGS,
    seed: int = 0,
) -> list[Path]:
    """Write the DCMH-layout MIRFlickr stand-in (``LAll``, ``YAll``, ``XAll`` in three files);
    returns the files. Labels are multi-hot over 24 labels (1-4 each), tags and image features
    follow them."""
    import scipy.io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_labels = len(MIRFLICKR_CONCEPTS)
    hot = np.zeros((rows, n_labels), np.uint8)
    for k in range(4):
        pick = rng.random(rows) < (1.0 if k == 0 else 0.45)
        hot[np.flatnonzero(pick), rng.integers(0, n_labels, int(pick.sum()))] = 1
    tag_p = rng.gamma(0.3, 1.0, (n_labels, text_dim)) / text_dim * 30
    tags = (rng.random((rows, text_dim)) < np.clip(hot @ tag_p + 0.002, 0, 0.9)).astype(np.uint8)
    centre = rng.standard_normal((n_labels, image_dim)).astype(np.float32)
    image = hot.astype(np.float32) @ centre + 2.0 * rng.standard_normal((rows, image_dim)).astype(
        np.float32
    )
    files = []
    for name, key, arr in (
        ("mirflickr25k-lall.mat", "LAll", hot),
        ("mirflickr25k-yall.mat", "YAll", tags),
        ("mirflickr25k-iall-vgg.mat", "XAll", np.maximum(image, 0)),
    ):
        files.append(out / name)
        scipy.io.savemat(files[-1], {key: arr})
    return files


def write_mirflickr_release(
    root: str | Path, images: int = 50, *, seed: int = 0, write_images: bool = False
) -> dict[str, Path]:
    """Write the original MIRFlickr-25K layout for ``images`` images under ``root``:
    ``mirflickr/meta/tags/tags<N>.txt``, ``mirflickr25k_annotations_v080/`` (every concept list,
    plain and ``_r1``, plus a README) and, with ``write_images``, tiny ``mirflickr/im<N>.jpg``.
    Returns ``{"images": ..., "annotations": ...}`` folders. Image 1 is in no list (unlabelled)."""
    rng = np.random.default_rng(seed)
    base = Path(root)
    img_dir, ann = base / "mirflickr", base / "mirflickr25k_annotations_v080"
    (img_dir / "meta" / "tags").mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    members: dict[str, list[int]] = {c: [] for c in MIRFLICKR_CONCEPTS}
    salient: dict[str, list[int]] = {c: [] for c in MIRFLICKR_R1}
    for n in range(2, images + 1):
        for c in rng.choice(MIRFLICKR_CONCEPTS, int(rng.integers(1, 4)), replace=False):
            members[str(c)].append(n)
            if c in salient and rng.random() < 0.5:
                salient[str(c)].append(n)
    for n in range(1, images + 1):
        tags = [c for c, ns in members.items() if n in ns] + ["nikon"]
        (img_dir / "meta" / "tags" / f"tags{n}.txt").write_text("\n".join(tags) + "\n")
        if write_images:
            from PIL import Image

            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            Image.new("RGB", (64, 48), color).save(img_dir / f"im{n}.jpg", quality=90)
    for c, ns in members.items():
        (ann / f"{c}.txt").write_text("".join(f"{n}\n" for n in sorted(ns)))
    for c, ns in salient.items():
        (ann / f"{c}_r1.txt").write_text("".join(f"{n}\n" for n in sorted(ns)))
    (ann / "README.txt").write_text(
        "Stand-in of the MIRFLICKR-25000 annotations v080 (generated by cmrops).\n"
    )
    return {"images": img_dir, "annotations": ann}
