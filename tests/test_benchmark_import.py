"""The benchmark importer: the .mat (v5, v7.3) and .h5 layouts of the cross-modal hashing
literature, written small in tmp_path, then trained on."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import scipy.io
import scipy.sparse

from cmrops.benchmarks_data import BenchmarkFormatError, import_benchmark, read_variables
from cmrops.stages.train import TrainParams, run

RNG = np.random.default_rng(0)


def _bench(n: int, n_labels: int = 5, image_dim: int = 20, vocab: int = 30, seed: int = 0):  # type: ignore[no-untyped-def]
    """Image features, bag-of-words counts and multi-hot labels with a shared label structure."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, n_labels), np.uint8)
    labels[np.arange(n), rng.integers(0, n_labels, n)] = 1
    labels[np.arange(n), rng.integers(0, n_labels, n)] = 1
    ci = rng.standard_normal((n_labels, image_dim))
    ct = rng.random((n_labels, vocab)) * 2
    image = labels @ ci + 0.5 * rng.standard_normal((n, image_dim))
    bow = rng.poisson(labels @ ct + 0.1).astype(np.float64)
    return image, bow, labels


def _matlab73(path: Path, arrays: dict[str, object]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: a 512-byte text header, then HDF5 with every
    matrix column-major (h5py sees (n, d) as (d, n)); sparse matrices as MATLAB_sparse groups."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, a in arrays.items():
            if scipy.sparse.issparse(a):
                m = scipy.sparse.csc_matrix(a)
                g = f.create_group(key)
                g.attrs["MATLAB_class"] = np.bytes_("double")
                g.attrs["MATLAB_sparse"] = np.uint64(m.shape[0])
                g.create_dataset("data", data=m.data)
                g.create_dataset("ir", data=m.indices.astype(np.uint64))
                g.create_dataset("jc", data=m.indptr.astype(np.uint64))
            else:
                ds = f.create_dataset(key, data=np.asarray(a).T)
                ds.attrs["MATLAB_class"] = np.bytes_("double")
        refs = f.create_group("#refs#")
        refs.create_dataset("a", data=np.zeros(2))
    with open(path, "r+b") as fh:
        fh.write(
            b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 "
            b"HDF5 schema 1.00 ."
        )


def _read(out: Path) -> dict[str, object]:
    a = pq.read_table(out / "split" / "assignments.parquet").to_pylist()
    labels = pq.read_table(out / "labelled" / "labels.parquet").to_pylist()
    return {
        "assign": a,
        "labels": labels,
        "image": np.load(out / "interim" / "features" / "image.npy"),
        "text": np.load(out / "interim" / "features" / "text.npy"),
        "samples": pq.read_table(out / "clean" / "samples.parquet"),
        "summary": json.loads((out / "import.json").read_text()),
    }


def test_fixed_split_v5_mat_train_inside_database(tmp_path: Path) -> None:
    """DJSRH / DSAH style MIRFlickr: I_tr/T_tr/L_tr ⊂ I_db/T_db/L_db, queries I_te/T_te/L_te."""
    image, bow, labels = _bench(150)
    q, db = np.arange(30), np.arange(30, 150)
    tr = db[:60]
    f = tmp_path / "mirflickr.mat"
    scipy.io.savemat(
        f,
        {
            "I_tr": image[tr],
            "T_tr": bow[tr],
            "L_tr": labels[tr],
            "I_te": image[q],
            "T_te": bow[q],
            "L_te": labels[q],
            "I_db": image[db],
            "T_db": bow[db],
            "L_db": labels[db],
        },
    )
    s = import_benchmark(f, tmp_path / "out")
    r = _read(tmp_path / "out")
    assert s["layout"] == "fixed split"
    assert s["samples"] == 150
    assert s["merged_across_parts"] == 60
    assert s["sets"] == {"database": 120, "query": 30}
    assert s["in_train"] == 60
    assert s["protocol"]["name"] == "imported:mirflickr"
    assert not s["read_transposed"]
    a = r["assign"]
    assert [x["sample_id"] for x in a] == sorted(x["sample_id"] for x in a)
    assert {x["protocol"] for x in a} == {"imported:mirflickr"}
    assert not any(x["in_train"] for x in a if x["split"] == "query")
    # features are L2-normalised rows of the originals, in the sample order
    rows = dict(
        zip(
            r["samples"]["sample_id"].to_pylist(),
            r["samples"]["feature_row"].to_pylist(),
            strict=True,
        )
    )
    img = r["image"]
    assert np.allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    originals = image / np.linalg.norm(image, axis=1, keepdims=True)
    matched = [
        np.flatnonzero(np.all(np.isclose(originals, img[rows[x["sample_id"]]], atol=1e-6), axis=1))
        for x in a
    ]
    assert sorted(int(m[0]) for m in matched) == list(range(150))
    assert len(r["labels"]) == int(labels.sum())
    assert json.loads((tmp_path / "out" / "labelled" / "vocabulary.json").read_text())[
        "labels"
    ] == [f"label_{j}" for j in range(5)]


def test_dcmh_separate_files_without_split_are_split_with_a_seed(tmp_path: Path) -> None:
    """DCMH's NUS-WIDE / MIRFlickr: one variable per file (XAll, YAll, LAll, plus file names)."""
    image, bow, labels = _bench(200)
    files = []
    for key, arr in (("XAll", image), ("YAll", bow), ("LAll", labels)):
        files.append(tmp_path / f"nus-wide-tc10-{key.lower()}.mat")
        scipy.io.savemat(files[-1], {key: arr})
    names = np.empty((200, 1), dtype=object)
    names[:, 0] = [f"im{i}.jpg" for i in range(200)]
    scipy.io.savemat(tmp_path / "fall.mat", {"FAll": names})  # a cell array: ignored
    s = import_benchmark(
        [*files, tmp_path / "fall.mat"], tmp_path / "a", name="nus", query=40, train=100, seed=3
    )
    assert s["layout"] == "no split (seeded)"
    assert s["sets"] == {"database": 160, "query": 40}
    assert s["in_train"] == 100
    assert s["variables"] == {"all": {"image": "XAll", "text": "YAll", "labels": "LAll"}}
    again = import_benchmark(files, tmp_path / "b", name="nus", query=40, train=100, seed=3)
    assert again["sets"] == s["sets"]
    ra, rb = _read(tmp_path / "a"), _read(tmp_path / "b")
    assert ra["assign"] == rb["assign"]  # seeded: the same split, the same ids
    other = import_benchmark(files, tmp_path / "c", name="nus", query=40, train=100, seed=4)
    assert _read(tmp_path / "c")["assign"] != ra["assign"]
    assert other["samples"] == 200
    with pytest.raises(ValueError, match="query=300"):
        import_benchmark(files, tmp_path / "d", query=300)


def test_matlab_v73_transposed_with_sparse_bag_of_words(tmp_path: Path) -> None:
    """MS-COCO as a v7.3 .mat: HDF5 with column-major matrices and a sparse text matrix."""
    image, bow, labels = _bench(90, n_labels=7, image_dim=40, vocab=25)
    q, db = np.arange(20), np.arange(20, 90)
    f = tmp_path / "coco.mat"
    _matlab73(
        f,
        {
            "I_te": image[q],
            "T_te": scipy.sparse.csr_matrix(bow[q]),
            "L_te": labels[q],
            "I_db": image[db],
            "T_db": scipy.sparse.csr_matrix(bow[db]),
            "L_db": labels[db],
        },
    )
    v = read_variables(f)
    assert v["I_te"].shape == (40, 20)
    assert v["I_te"].transposed_hint
    assert v["T_te"].shape == (20, 25)
    assert not v["T_te"].transposed_hint
    s = import_benchmark(f, tmp_path / "out")
    assert sorted(s["read_transposed"]) == ["I_db", "I_te", "L_db", "L_te"]
    assert s["sets"] == {"database": 70, "query": 20}
    assert s["in_train"] == 70  # no train part: the database trains
    assert (s["image_dim"], s["text_dim"], s["labels"]) == (40, 25, 7)
    r = _read(tmp_path / "out")
    bow_n = bow / np.linalg.norm(bow, axis=1, keepdims=True)
    assert np.allclose(np.sort(r["text"][:, 0]), np.sort(bow_n[:, 0]), atol=1e-6)


def test_plain_h5_stored_transposed(tmp_path: Path) -> None:
    """DJSRH-style .h5 written from MATLAB order: (d, n) arrays, no MATLAB header."""
    image, bow, labels = _bench(60, image_dim=16, vocab=12)
    f = tmp_path / "flickr.h5"
    with h5py.File(f, "w") as h:
        h["ImgTrain"], h["TagTrain"], h["LabTrain"] = image[:40].T, bow[:40].T, labels[:40].T
        h["ImgQuery"], h["TagQuery"], h["LabQuery"] = image[40:].T, bow[40:].T, labels[40:].T
    s = import_benchmark(f, tmp_path / "out")
    assert s["sets"] == {"database": 40, "query": 20}
    assert s["in_train"] == 40
    assert len(s["read_transposed"]) == 6
    assert (s["image_dim"], s["text_dim"]) == (16, 12)


def test_wikipedia_class_ids(tmp_path: Path) -> None:
    """Wikipedia: 128-d SIFT image / 10-d LDA text features, one of 10 classes (ids 1..10)."""
    rng = np.random.default_rng(2)
    cls = rng.integers(1, 11, 80)
    image = np.eye(10)[cls - 1] @ rng.standard_normal((10, 128)) + rng.standard_normal((80, 128))
    text = np.abs(np.eye(10)[cls - 1] + 0.1 * rng.random((80, 10)))
    f = tmp_path / "wikipedia.mat"
    scipy.io.savemat(
        f,
        {
            "I_tr": image[:60],
            "T_tr": text[:60],
            "L_tr": cls[:60, None],
            "I_te": image[60:],
            "T_te": text[60:],
            "L_te": cls[60:, None],
        },
    )
    s = import_benchmark(f, tmp_path / "out")
    assert s["labels"] == len(np.unique(cls))
    assert s["unlabelled_samples"] == 0
    r = _read(tmp_path / "out")
    assert len(r["labels"]) == 80  # one label each
    assert {x["label"] for x in r["labels"]} == {f"class_{c}" for c in np.unique(cls)}
    assert s["sets"] == {"database": 60, "query": 20}


def test_bad_layouts_are_refused_with_a_reason(tmp_path: Path) -> None:
    image, bow, labels = _bench(30)
    f = tmp_path / "raw.mat"
    scipy.io.savemat(
        f,
        {"IAll": RNG.integers(0, 255, (30, 3, 4, 4)).astype(np.uint8), "YAll": bow, "LAll": labels},
    )
    with pytest.raises(BenchmarkFormatError, match="raw images"):
        import_benchmark(f, tmp_path / "o1")
    scipy.io.savemat(
        f,
        {
            "IAll": RNG.integers(0, 255, (30, 3, 4, 4)).astype(np.uint8),
            "XAll": image,
            "YAll": bow,
            "LAll": labels,
        },
    )
    s = import_benchmark(f, tmp_path / "o2", query=5, train=10)  # the features are used
    assert s["variables"]["all"]["image"] == "XAll"
    scipy.io.savemat(f, {"XAll": image, "YAll": bow[:17, :13], "LAll": labels})
    with pytest.raises(BenchmarkFormatError, match="share no sample dimension"):
        import_benchmark(f, tmp_path / "o3")
    scipy.io.savemat(f, {"XAll": image, "image": image, "YAll": bow})
    with pytest.raises(BenchmarkFormatError, match="several variables"):
        import_benchmark(f, tmp_path / "o4")
    s = import_benchmark(f, tmp_path / "o5", keys={"image": "image"}, query=5, train=10)
    assert s["labels"] == 0
    assert s["unlabelled_samples"] == 30
    scipy.io.savemat(f, {"XAll": image, "LAll": labels})
    with pytest.raises(BenchmarkFormatError, match="no text"):
        import_benchmark(f, tmp_path / "o6")
    scipy.io.savemat(f, {"XAll": image, "YAll": bow, "LAll": labels * 3})
    with pytest.raises(BenchmarkFormatError, match="0/1"):
        import_benchmark(f, tmp_path / "o7")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(BenchmarkFormatError, match="not a readable"):
        import_benchmark(tmp_path / "junk.mat", tmp_path / "o8")
    with pytest.raises(FileNotFoundError):
        import_benchmark(tmp_path / "absent.mat", tmp_path / "o9")


def test_an_imported_benchmark_trains(tmp_path: Path) -> None:
    image, bow, labels = _bench(260, n_labels=4, seed=5)
    f = tmp_path / "mir.mat"
    scipy.io.savemat(f, {"XAll": image, "YAll": bow, "LAll": labels})
    out = tmp_path / "bench"
    import_benchmark(f, out, query=40, train=180)
    p = TrainParams(
        methods=("dcmh",),
        bits=(32,),
        epochs=8,
        batch_size=32,
        hidden=(32,),
        patience=0,
        checkpoint_every=0,
    )
    m = run(
        p,
        out / "split",
        out / "clean",
        out / "interim",
        out / "labelled",
        tmp_path / "models",
        tmp_path / "codes",
        progress=False,
    )
    assert m["protocol"] == "imported:mir"
    assert m["roles"] == {"train": 162, "val": 18, "query": 40, "database": 220}
    assert m["models"]["dcmh-32"]["best_val_map"] > 0.5
    assert np.load(tmp_path / "codes" / "dcmh-32" / "image_query.npy").shape == (40, 1)
    q = dataclasses.replace(p, methods=("contrastive",))
    assert run(
        q,
        out / "split",
        out / "clean",
        out / "interim",
        out / "labelled",
        tmp_path / "models",
        tmp_path / "codes",
        progress=False,
    )["models"]


def _roph_wikipedia(n: int = 60, seed: int = 2) -> dict[str, object]:
    """The RoPH repository's Wikipedia layout, small: one struct ``data`` with ``X1`` (image
    features x samples), ``X2`` (text features x samples), ``Y`` (class ids) and ``split``,
    a struct of 1-based ``ind_train`` / ``ind_test``."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(1, 11, n)
    centre_i, centre_t = rng.standard_normal((11, 12)), rng.standard_normal((11, 8))
    x1 = (centre_i[cls] + 0.3 * rng.standard_normal((n, 12))).T  # 12 x n, MATLAB's layout
    x2 = (centre_t[cls] + 0.3 * rng.standard_normal((n, 8))).T
    perm = rng.permutation(n) + 1  # 1-based
    split = {"ind_train": perm[: n * 3 // 4].reshape(1, -1).astype(np.float64),
             "ind_test": perm[n * 3 // 4 :].reshape(1, -1).astype(np.float64)}  # fmt: skip
    return {"X1": x1, "X2": x2, "Y": cls.reshape(-1, 1).astype(np.float64), "split": split}


def test_matlab_struct_lists_its_variables_and_takes_a_mapping(tmp_path: Path) -> None:
    """A struct the names do not explain: the error lists every variable with its shape; the
    explicit mapping (dotted paths, or their unique ends) imports it with its index split."""
    data = _roph_wikipedia()
    f = tmp_path / "wikipedia.mat"
    scipy.io.savemat(f, {"data": data})
    variables = read_variables(f)
    assert set(variables) == {"data.X1", "data.X2", "data.Y", "data.split.ind_train",
                              "data.split.ind_test"}  # fmt: skip
    with pytest.raises(BenchmarkFormatError) as err:
        import_benchmark(f, tmp_path / "o1")
    msg = str(err.value)
    for line in ("data.X1 (12, 60)", "data.X2 (8, 60)", "data.Y (60, 1)",
                 "data.split.ind_train (1, 45)", "data.split.ind_test (1, 15)"):  # fmt: skip
        assert line in msg, msg
    assert "--image VAR --text VAR" in msg
    keys = {"image": "data.X1", "text": "X2", "labels": "Y"}  # full paths or unique ends
    s = import_benchmark(f, tmp_path / "o2", keys=keys)
    assert s["variables"] == {"all": {"image": "data.X1", "text": "data.X2", "labels": "data.Y"}}
    assert s["indices"]["variables"] == {
        "query": {"key": "data.split.ind_test", "rows": 15},
        "train": {"key": "data.split.ind_train", "rows": 45},
    }
    assert s["sets"] == {"database": 45, "query": 15}  # Wikipedia: the database is train
    assert (s["image_dim"], s["text_dim"], s["labels"]) == (12, 8, len(np.unique(data["Y"])))
    # the rows are the ones the 1-based indices name
    r = _read(tmp_path / "o2")
    x1 = np.asarray(data["X1"]).T
    test_rows = np.asarray(data["split"]["ind_test"]).ravel().astype(int) - 1
    want = x1[test_rows] / np.linalg.norm(x1[test_rows], axis=1, keepdims=True)
    q_feature_rows = sorted(
        row["feature_row"]
        for row, a in zip(r["samples"].to_pylist(), _assign_by_id(r), strict=True)
        if a == "query"
    )
    got = np.asarray(r["image"])[q_feature_rows]
    assert np.allclose(np.sort(got, axis=0), np.sort(want.astype(np.float32), axis=0), atol=1e-6)
    # an index past the samples is refused, saying which
    data["split"]["ind_test"] = np.array([[61.0]])
    scipy.io.savemat(f, {"data": data})
    with pytest.raises(BenchmarkFormatError, match=r"ind_test: 1-based indices 61\.\.61"):
        import_benchmark(f, tmp_path / "o3", keys=keys)
    with pytest.raises(BenchmarkFormatError, match="no variable 'X9'"):
        import_benchmark(f, tmp_path / "o4", keys={**keys, "image": "X9"})


def _assign_by_id(r: dict[str, object]) -> list[str]:
    split = {a["sample_id"]: a["split"] for a in r["assign"]}  # type: ignore[attr-defined]
    return [split[s] for s in r["samples"]["sample_id"].to_pylist()]  # type: ignore[index]


def test_matlab_v73_struct_through_the_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The same layout saved as MATLAB v7.3 (HDF5: a struct is a group, every matrix stored
    column-major), imported with the command line's explicit mapping."""
    from cmrops import cli

    data = _roph_wikipedia(n=40, seed=4)
    f = tmp_path / "wiki73.mat"
    with h5py.File(f, "w", userblock_size=512) as h:
        g = h.create_group("data")
        g.attrs["MATLAB_class"] = np.bytes_("struct")
        for key in ("X1", "X2", "Y"):
            ds = g.create_dataset(key, data=np.asarray(data[key]).T)
            ds.attrs["MATLAB_class"] = np.bytes_("double")
        sp = g.create_group("split")
        sp.attrs["MATLAB_class"] = np.bytes_("struct")
        for key, v in data["split"].items():  # type: ignore[attr-defined]
            sp.create_dataset(key, data=np.asarray(v).T).attrs["MATLAB_class"] = np.bytes_("double")
    with open(f, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .")
    variables = read_variables(f)
    assert variables["data.X1"].shape == (40, 12)  # column-major: h5py sees the transpose
    assert variables["data.X1"].transposed_hint
    rc = cli.main([
        "import-benchmark", str(f), "--out", str(tmp_path / "out"), "--image", "data.X1",
        "--text", "data.X2", "--labels", "data.Y", "--train-index", "data.split.ind_train",
        "--test-index", "ind_test",
    ])  # fmt: skip
    assert rc == 0
    assert "imported wiki73: 40 samples" in capsys.readouterr().out
    s = json.loads((tmp_path / "out" / "import.json").read_text())
    assert s["sets"] == {"database": 30, "query": 10}
    assert s["image_dim"] == 12
    assert s["text_dim"] == 8
    # nothing named: the command says what is in the file
    rc = cli.main(["import-benchmark", str(f), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "data.split.ind_test" in err
    assert "data.X1" in err
