"""The standard benchmarks in their published layouts: Wikipedia (three layouts), MIRFlickr's
DCMH files, and the near-duplicate queries the importer lists in the split manifests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io

from cmrops.benchmark_layouts import write_mirflickr_dcmh, write_wikipedia
from cmrops.benchmarks_data import BenchmarkFormatError, import_benchmark, near_duplicate_queries
from cmrops.splitting.manifests import read_manifests
from cmrops.stages import evaluate, train


@pytest.mark.parametrize("layout", ["hashing", "original", "deep"])
def test_wikipedia_layouts_import_to_the_standard_protocol(tmp_path: Path, layout: str) -> None:
    files = write_wikipedia(tmp_path / "src", layout, image_dim=64 if layout == "deep" else None)
    s = import_benchmark(files, tmp_path / "out", name="wiki")
    assert s["sets"] == {"database": 2173, "query": 693}
    assert s["in_train"] == 2173  # the database is the training set
    assert (s["samples"], s["labels"], s["unlabelled_samples"]) == (2866, 10, 0)
    assert (s["image_dim"], s["text_dim"]) == ((64, 300) if layout == "deep" else (128, 10))
    labels = pq.read_table(tmp_path / "out" / "labelled" / "labels.parquet")
    assert labels.num_rows == 2866  # one category each
    lists = read_manifests(tmp_path / "out" / "split")
    assert {k: len(v) for k, v in lists["sets"].items()} == {
        "query": 693, "database": 2173, "train": 2173,
    }  # fmt: skip
    assert len(lists["near_duplicate_queries"]) == s["near_duplicate_queries"]["count"]


def test_wikipedia_category_lists_are_checked(tmp_path: Path) -> None:
    files = write_wikipedia(tmp_path, "original")
    bad = tmp_path / "testset_txt_img_cat.list"
    bad.write_text(bad.read_text().replace("\t3\n", "\tthree\n", 1))
    with pytest.raises(BenchmarkFormatError, match=r"testset_txt_img_cat.list:\d+: expected"):
        import_benchmark(files, tmp_path / "o1")
    (tmp_path / "cats.list").write_text("a\tb\t1\n")
    with pytest.raises(BenchmarkFormatError, match="trainset_"):
        import_benchmark([files[0], tmp_path / "cats.list"], tmp_path / "o2")
    with pytest.raises(BenchmarkFormatError, match="labels for parts"):
        import_benchmark(files[:2], tmp_path / "o3")  # test part without its list


def test_wikipedia_trains_and_evaluates_end_to_end(tmp_path: Path) -> None:
    src = write_wikipedia(tmp_path / "src", "hashing")
    out = tmp_path / "wiki"
    s = import_benchmark(src, out, name="wiki")
    p = train.TrainParams(methods=("dcmh",), bits=(16,), epochs=3, batch_size=128, hidden=(64,),
                          patience=0, checkpoint_every=0, device="cpu")  # fmt: skip
    m = train.run(p, out / "split", out / "clean", out / "interim", out / "labelled",
                  tmp_path / "models", tmp_path / "codes", progress=False)  # fmt: skip
    assert m["protocol"] == "imported:wiki"
    assert (m["roles"]["query"], m["roles"]["database"]) == (693, 2173)
    ev = evaluate.run(evaluate.EvaluateParams(map_at=[50], top_k=[10], pk_curve=[10]),
                      tmp_path / "codes", out / "labelled", out / "split",
                      tmp_path / "retrieval.json", tmp_path / "plots")  # fmt: skip
    i2t = ev["models"]["dcmh-16"]["directions"]["image_to_text"]
    assert 0.1 < i2t["hash"]["map"] <= 1.0  # 10 balanced classes: chance is about 0.1
    assert i2t["near_duplicate_queries"] == s["near_duplicate_queries"]["count"] > 0
    assert i2t["hash"]["map_without_near_duplicate_queries"] is not None
    assert json.loads((tmp_path / "retrieval.json").read_text())["models"]


def test_mirflickr_dcmh_files_use_the_dcmh_protocol(tmp_path: Path) -> None:
    files = write_mirflickr_dcmh(tmp_path, image_dim=16, text_dim=40)
    assert scipy.io.loadmat(files[0])["LAll"].shape == (20015, 24)
    s = import_benchmark(files, tmp_path / "out", name="mirflickr", query=2000, train=10000)
    assert s["variables"] == {"all": {"labels": "LAll", "text": "YAll", "image": "XAll"}}
    assert (s["sets"]["query"], s["in_train"]) == (2000, 10000)
    assert s["sets"]["database"] == s["samples"] - 2000  # repeated rows are one sample
    raw = tmp_path / "iall.mat"  # DCMH's own IAll holds pixels: refused with what to do
    scipy.io.savemat(raw, {"IAll": np.zeros((5, 3, 4, 4), np.uint8)})
    with pytest.raises(BenchmarkFormatError, match="raw images"):
        import_benchmark([files[0], files[1], raw], tmp_path / "o2")


def test_near_duplicate_queries_exact_cosine_and_empty_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image, text = rng.random((8, 6)), rng.random((8, 5))
    split = np.array(["query"] * 4 + ["database"] * 4, dtype=object)
    image[0] = image[5]  # identical image row
    text[1] = 3.0 * text[6]  # same direction: cosine 1
    text[2] = text[7] + 0.02 * rng.random(5)  # close, cosine below 1
    text[3] = text[4] = 0.0  # tagless texts match nothing
    got = near_duplicate_queries({"image": image, "text": text}, split, cosine=0.999999)
    assert got["image"].tolist() == [True] + [False] * 7
    assert got["text"].tolist() == [False, True] + [False] * 6
    loose = near_duplicate_queries({"image": image, "text": text}, split, cosine=0.99)
    assert loose["any"][:4].tolist() == [True, True, True, False]

    labels = np.eye(2, dtype=np.uint8)[np.arange(8) % 2]
    f = tmp_path / "b.mat"
    scipy.io.savemat(f, {"I_te": image[:4], "T_te": text[:4], "L_te": labels[:4],
                         "I_db": image[4:], "T_db": text[4:], "L_db": labels[4:]})  # fmt: skip
    s = import_benchmark(f, tmp_path / "out", near_duplicate_cosine=0.999999)
    assert (s["near_duplicate_queries"]["image"], s["near_duplicate_queries"]["text"]) == (1, 1)
    lists = read_manifests(tmp_path / "out" / "split")
    ids = {r["source_key"]: r["sample_id"] for r in
           pq.read_table(tmp_path / "out" / "clean" / "samples.parquet").to_pylist()}  # fmt: skip
    assert lists["near_duplicate_queries"] == sorted([ids["query:0"], ids["query:1"]])
    assert lists["manifest"]["near_duplicate_queries"]["definition"]["cosine_threshold"] == 0.999999
    with pytest.raises(ValueError, match="near_duplicate_cosine"):
        import_benchmark(f, tmp_path / "o2", near_duplicate_cosine=0)
