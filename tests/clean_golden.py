"""Reference digests of the clean stage's outputs (no tests here).

The rules of the clean stage were moved into one module each (``cmrops/cleaning/rules/``); the
outputs of the built-in rules must not change by a byte. The reference is the SHA-256 of every
deterministic output file (``samples.parquet``, ``quarantine.parquet``, ``groups.parquet``,
``quality.json``; ``throughput.json`` holds seconds) of three runs, recorded in
``tests/data/clean_golden.json`` by the code on main *before* the refactor (commit 9309604),
re-recorded from main's own code at 1720b6a when main changed clean's outputs on purpose
(``quality.json`` gained the ``review`` counts of the review answer log; the other files kept
their bytes):

* ``synthetic`` - the built-in synthetic set through collect -> preprocess -> label -> clean
  (:func:`synthetic_pipeline`, the fixture of ``tests/test_clean_synthetic.py``);
* ``rules`` - hand-made samples that every per-sample rule, the mismatch rule (an aligned
  dual encoder, a numeric threshold), both label rules and both duplicate rules flag;
* ``with_caption`` - the same samples with ``near_duplicate_image.drop: with_caption`` and
  ``label_disagreement.drop: false``.

To regenerate (only when a change of the outputs is intended, e.g. a merged change of a rule),
run the *reference* code - the commit before your change - with this file:
``python -m tests.clean_golden --write tests/data/clean_golden.json`` from a checkout of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tests.clean_helpers import flip, interim, labelled, rand64, row, sid

REFERENCE = Path(__file__).parent / "data" / "clean_golden.json"
#: The deterministic outputs of a clean run (``quality.json`` is the metrics file).
OUTPUTS = ("samples.parquet", "quarantine.parquet", "groups.parquet", "quality.json")


def fake_language(text: str) -> str:
    """A 'detector' for the caption_language rule: French when it says 'le'."""
    return "fr" if " le " in f" {text} " else "en"


def digests(out: Path, metrics: Path) -> dict[str, str]:
    """SHA-256 of each deterministic output of a clean run into ``out``."""
    files = {name: out / name for name in OUTPUTS[:3]} | {"quality.json": metrics}
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()}


def synthetic_pipeline(root: Path) -> dict[str, Any]:
    """The built-in synthetic set (400 samples, no embeddings) through collect, preprocess,
    label and clean under ``root``; returns the clean metrics."""
    from cmrops.sources.synthetic import DefectRates
    from cmrops.stages import clean, collect, label, preprocess

    params = dataclasses.replace(
        clean.CleanParams(), near_duplicate_image=clean.NearImageRule(radius=4)
    )  # without embeddings there is no cosine confirmation: a tighter radius
    spec = collect.SourceSpec(
        name="synthetic", kind="synthetic", n=400, seed=0, defects=DefectRates()
    )
    collect.run(collect.CollectParams(sources=(spec,)), root / "raw")
    pre = preprocess.PreprocessParams(n_workers=1, embeddings=False, tokenizer="words")
    preprocess.run(pre, root / "raw", root / "interim")
    label.run(
        label.LabelParams(auto_methods=("provided", "keyword")),
        root / "interim",
        root / "labelled",
    )
    return clean.run(
        params,
        root / "interim",
        root / "labelled",
        root / "clean",
        raw_dir=root / "raw",
        metrics_path=root / "metrics" / "quality.json",
    )


def _rows() -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    base, cap = rand64("g-base"), rand64("g-cap")
    named = [
        ("tiny", {"width": 30, "height": 100}),
        ("wide", {"width": 900, "height": 100}),
        ("short", {"captions": ["a cat"]}),
        ("long", {"captions": ["word " * 300]}),
        ("both", {"width": 10, "height": 100, "captions": ["hi"]}),
        ("french", {"captions": ["le chat est sur le tapis"]}),
        ("swap", {}),
        ("swapped", {}),
        ("nolabel", {}),
        ("orig", {"phash": base, "dhash": 5, "caption_simhash": cap, "width": 200}),
        ("copy", {"phash": base, "dhash": 5, "caption_simhash": cap}),
        ("near", {"phash": flip(base, [4]), "dhash": 5, "caption_simhash": flip(cap, [1])}),
        ("image_only", {"phash": flip(base, [7]), "dhash": 5}),
        ("far_emb", {"phash": flip(base, [9]), "dhash": 5}),
        ("cap_a", {"caption_simhash": rand64("g-c2")}),
        ("cap_b", {"caption_simhash": flip(rand64("g-c2"), [2])}),
        ("fine", {}),
    ]
    rows = [row(name, **over) for name, over in named]
    by = {name: i for i, (name, _) in enumerate(named)}
    rows[by["copy"]]["image_sha256"] = rows[by["orig"]]["image_sha256"]
    n = len(rows)
    angle = np.linspace(0.0, 1.2, n)  # distinct image directions, near ones close
    image = np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], axis=1)
    for name in ("copy", "near", "image_only"):
        image[by[name]] = image[by["orig"]] + [0.0, 0.01, 0.0]
    image[by["far_emb"]] = [0.0, 0.0, 1.0]
    text = image.copy()
    text[by["swap"]] = [0.0, 0.0, 1.0]  # the caption of another image: cosine near 0
    return rows, image, text


def _labels() -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    names = [r["sample_id"] for r in _rows()[0]]
    effective = {s: ["cat"] for s in names if s != sid("nolabel")}
    provided = {s: ["cat"] for s in effective}
    keyword = {s: ["cat"] for s in effective}
    provided[sid("swapped")], keyword[sid("swapped")] = ["dog"], ["bird"]
    return effective, {"provided": provided, "keyword": keyword}


def hand_made(root: Path, name: str) -> dict[str, Any]:
    """Clean the hand-made samples under ``root`` with the params of scenario ``name``
    (``rules`` or ``with_caption``); returns the metrics."""
    from cmrops.stages import clean

    p = clean.CleanParams()
    params = dataclasses.replace(
        p,
        caption_language=clean.LanguageRule(detector="tests.clean_golden:fake_language"),
        mismatch=clean.MismatchRule(min_similarity=0.3),
    )
    if name == "with_caption":
        params = dataclasses.replace(
            params,
            near_duplicate_image=clean.NearImageRule(drop="with_caption"),
            label_disagreement=clean.LabelDisagreementRule(drop=False),
        )
    rows, image, text = _rows()
    effective, methods = _labels()
    inter = interim(root / "interim", rows, image=image, text=text, aligned=True)
    lab = labelled(root / "labelled", effective, vocabulary=["bird", "cat", "dog"], methods=methods)
    return clean.run(params, inter, lab, root / "clean", metrics_path=root / "quality.json")


def scenario(root: Path, name: str) -> dict[str, str]:
    """Run scenario ``name`` under ``root``; the digests of its outputs."""
    if name == "synthetic":
        synthetic_pipeline(root)
        return digests(root / "clean", root / "metrics" / "quality.json")
    hand_made(root, name)
    return digests(root / "clean", root / "quality.json")


SCENARIOS = ("synthetic", "rules", "with_caption")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", type=Path, default=None, help="write the digests to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        found = {name: scenario(Path(tmp) / name, name) for name in SCENARIOS}
    text = json.dumps(found, indent=2, sort_keys=True) + "\n"
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
