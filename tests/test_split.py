"""The split stage: protocols, stratification, groups, stability, the leakage audit, bad input."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmrops import cli
from cmrops.params import ParamsError, load_section
from cmrops.schema import ASSIGNMENTS
from cmrops.splitting.manifests import read_manifests
from cmrops.stages.split import Protocol, SetSize, SplitParams, resolve_size, run
from tests.clean_helpers import flip, interim, labelled, rand64, read_json, row

RATIO = Protocol("ratio", train=0.8, val=0.1, test=0.1)
HASHING = Protocol("hashing", query=100, train=500)


def params(protocol: str = "ratio", **kw: Any) -> SplitParams:
    return SplitParams(protocol=protocol, protocols={"ratio": RATIO, "hashing": HASHING}, **kw)


def dataset(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """``n`` samples with 1-3 Zipf-distributed labels each (many rare ones)."""
    rng = np.random.default_rng(seed)
    rows, labels = [], {}
    for i in range(n):
        r = row(f"{seed}-{i}")
        rows.append(r)
        k = int(rng.integers(1, 4))
        labels[r["sample_id"]] = sorted(
            {f"l{int(x):02d}" for x in np.minimum(rng.zipf(1.6, k), 30)}
        )
    return rows, labels


def split(
    tmp: Path, rows: list[dict[str, Any]], labels: dict[str, list[str]] | None, p: SplitParams
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    interim(tmp / "clean", rows)
    lab = labelled(tmp / "labelled", labels) if labels is not None else None
    m = run(p, tmp / "clean", lab, tmp / "split", metrics_path=tmp / "metrics" / "split.json")
    t = pq.read_table(tmp / "split" / "assignments.parquet")
    return {r["sample_id"]: r for r in t.to_pylist()}, m


def _by_set(assign: dict[str, dict[str, Any]], labels: dict[str, list[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for s, a in assign.items():
        out.setdefault(a["split"], set()).update(labels[s])
    return out


# --------------------------------------------------------------------------- protocols


def test_ratio_split_stratifies_every_label_into_every_set(tmp_path: Path) -> None:
    rows, labels = dataset(600)
    rare = ["r3", "r4"]  # labels with 3 and 4 samples only
    for j, lab in enumerate(rare):
        for r in rows[10 * j : 10 * j + 3 + j]:
            labels[r["sample_id"]] = [*labels[r["sample_id"]], lab]
    assign, m = split(tmp_path / "s", rows, labels, params())
    counts: dict[str, int] = {}
    for labs in labels.values():
        for lab in labs:
            counts[lab] = counts.get(lab, 0) + 1
    present = _by_set(assign, labels)
    for lab, c in counts.items():
        if c >= 3:
            assert all(lab in present[s] for s in ("train", "val", "test")), lab
    assert m["labels"]["missing_from_a_set"] == {"train": [], "val": [], "test": []}
    assert m["sizes"] == {"train": 480, "val": 60, "test": 60}
    assert {a["in_train"] for a in assign.values() if a["split"] == "train"} == {True}
    assert not any(a["in_train"] for a in assign.values() if a["split"] != "train")
    # the same data split by hash and sizes only misses rare labels and balances worse
    _, plain = split(tmp_path / "p", rows, labels, params(stratify=False))
    assert any(plain["labels"]["missing_from_a_set"].values())
    dev = m["labels"]["share_deviation"]["mean_weighted_by_label_size"]
    assert dev < plain["labels"]["share_deviation"]["mean_weighted_by_label_size"]
    assert m["stratified"] is True
    assert plain["stratified"] is False


def test_hashing_protocol_query_database_and_training_set(tmp_path: Path) -> None:
    rows, labels = dataset(800)
    assign, m = split(tmp_path, rows, labels, params("hashing"))
    sets = [a["split"] for a in assign.values()]
    assert sets.count("query") == 100
    assert sets.count("database") == 700
    train = [a for a in assign.values() if a["in_train"]]
    assert len(train) == 500
    assert {a["split"] for a in train} == {"database"}
    assert m["sizes"] == {"query": 100, "database": 700, "train": 500}
    assert m["protocol"] == {"name": "hashing", "kind": "hashing", "query": 100, "train": 500}
    assert {a["protocol"] for a in assign.values()} == {"hashing"}
    assert {a["seed"] for a in assign.values()} == {0}
    t = pq.read_table(tmp_path / "split" / "assignments.parquet")
    assert t.schema.remove_metadata().equals(ASSIGNMENTS)
    stamped = json.loads(t.schema.metadata[b"cmrops.protocol"])
    assert stamped == {"name": "hashing", "kind": "hashing", "query": 100, "train": 500}
    assert m["labels"]["missing_from_a_set"] == {"query": [], "database": [], "train": []}
    assert set(m["leakage"]["pairs"]) == {"query-database", "query-train"}
    # the manifests: the same sets as sorted id lists; no near-duplicate query by construction
    lists = read_manifests(tmp_path / "split")
    for name in ("query", "database"):
        assert lists["sets"][name] == sorted(s for s, a in assign.items() if a["split"] == name)
    assert lists["sets"]["train"] == sorted(s for s, a in assign.items() if a["in_train"])
    assert lists["near_duplicate_queries"] == []
    man = lists["manifest"]
    assert man["counts"] == {"query": 100, "database": 700, "train": 500}
    assert man["seed"] == 0
    assert man["protocol"]["name"] == "hashing"
    assert man["near_duplicate_queries"]["definition"]["image_radius"] == 8
    assert "by construction" in man["near_duplicate_queries"]["definition"]["note"]


# --------------------------------------------------------------------------- groups and leakage


def _near_copies(
    n: int,
) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[tuple[str, str]]]:
    """``n`` singletons plus 20 near-copy pairs (pHash 3 bits apart) and 10 caption copies."""
    rows, labels = dataset(n, seed=7)
    pairs = []
    for k in range(20):
        base = rand64(f"copy{k}")
        a, b = row(f"ca{k}", phash=base), row(f"cb{k}", phash=flip(base, [1, 20, 40]))
        rows += [a, b]
        labels[a["sample_id"]] = labels[b["sample_id"]] = ["l01"]
        pairs.append((a["sample_id"], b["sample_id"]))
    for k in range(10):
        cap = rand64(f"cap{k}")
        a, b = row(f"ta{k}", caption_simhash=cap), row(f"tb{k}", caption_simhash=flip(cap, [5]))
        rows += [a, b]
        labels[a["sample_id"]] = labels[b["sample_id"]] = ["l02"]
        pairs.append((a["sample_id"], b["sample_id"]))
    return rows, labels, pairs


def test_near_copies_straddling_a_would_be_split_are_kept_together(tmp_path: Path) -> None:
    rows, labels, pairs = _near_copies(300)
    # grouping switched off (radius 0 links identical hashes only): some copies straddle sets
    loose, _ = split(tmp_path / "loose", rows, labels, params(image_radius=0, caption_radius=0))
    straddling = [(a, b) for a, b in pairs if loose[a]["split"] != loose[b]["split"]]
    assert straddling, "expected some near-copy pairs to straddle without grouping"
    # group-aware: every pair in one set and one group, and the audit finds no leak
    assign, m = split(tmp_path / "grouped", rows, labels, params())
    for a, b in pairs:
        assert assign[a]["split"] == assign[b]["split"]
        assert assign[a]["group_id"] == assign[b]["group_id"] == min(a, b)
    assert m["leakage"]["total"] == 0
    assert m["groups"]["sizes"] == {"2": 30}
    assert m["groups"]["linked_by"]["image"]["pairs"] == 20
    assert m["groups"]["linked_by"]["caption"]["pairs"] == 10
    # the ungrouped split, imported and audited at the real radii, shows exactly its leaks
    imported = tmp_path / "loose" / "split" / "assignments.parquet"
    _, audit = split(tmp_path / "audit", rows, labels, params(import_assignments=str(imported)))
    assert audit["mode"] == "imported"
    assert audit["leakage"]["total"] == len(straddling)
    meta = ("sets", "kind", "distance")
    listed = {
        frozenset(v for k, v in x.items() if k not in meta) for x in audit["leakage"]["listed"]
    }
    assert listed == {frozenset(p) for p in straddling}


def test_imported_split_from_csv_is_audited_honestly(tmp_path: Path) -> None:
    rows, labels, pairs = _near_copies(50)
    path = tmp_path / "theirs.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "split"])
        for i, r in enumerate(rows[:-1]):  # the last sample is not assigned
            w.writerow([r["sample_id"], "query" if i % 2 else "database"])
        w.writerow(["not-a-sample", "query"])
    assign, m = split(
        tmp_path, rows, labels, params(import_assignments=str(path), audit_max_listed=3)
    )
    assert m["protocol"]["kind"] == "imported"
    assert {a["protocol"] for a in assign.values()} == {"imported:theirs.csv"}
    assert m["imported"]["clean_samples_not_assigned"] == 1
    assert m["imported"]["assigned_samples_not_in_clean"] == 1
    assert len(assign) == len(rows) - 1
    leaks = sum(
        1
        for a, b in pairs
        if (a in assign and b in assign and assign[a]["split"] != assign[b]["split"])
    )
    assert (
        m["leakage"]["pairs"]["query-database"]["image"]
        + m["leakage"]["pairs"]["query-database"]["caption"]
        == leaks
    )
    assert len(m["leakage"]["listed"]) == min(3, leaks)
    assert m["leakage"]["listed_cap"] == 3
    # the leakage seen from the query side: every query with a near-copy in the database
    want = set()
    for a, b in pairs:
        if a in assign and b in assign and assign[a]["split"] != assign[b]["split"]:
            want.add(a if assign[a]["split"] == "query" else b)
    lists = read_manifests(tmp_path / "split")
    assert leaks > 0
    assert lists["near_duplicate_queries"] == sorted(want)
    assert "imported" in lists["manifest"]["near_duplicate_queries"]["definition"]["note"]


# --------------------------------------------------------------------------- stability


@pytest.mark.parametrize("protocol", ["ratio", "hashing"])
def test_adding_ten_percent_more_data(tmp_path: Path, protocol: str) -> None:
    rows, labels = dataset(1100, seed=3)
    old_rows = rows[:1000]
    old, _ = split(
        tmp_path / "v1",
        old_rows,
        {r["sample_id"]: labels[r["sample_id"]] for r in old_rows},
        params(protocol),
    )
    # stateless: a documented small fraction moves where a label's demand runs out elsewhere
    new, _ = split(tmp_path / "v2", rows, labels, params(protocol))
    moved = sum(1 for s in old if old[s]["split"] != new[s]["split"])
    assert moved <= 0.05 * len(old), moved  # measured 2-4 %
    # anchored on the earlier release: no existing sample moves, new ones are placed
    anchor = str(tmp_path / "v1" / "split" / "assignments.parquet")
    anchored, m = split(tmp_path / "v3", rows, labels, params(protocol, anchor=anchor))
    assert all(anchored[s]["split"] == old[s]["split"] for s in old)
    assert all(anchored[s]["in_train"] == old[s]["in_train"] for s in old)
    assert len(anchored) == 1100
    assert m["anchor"]["anchored_samples"] == 1000
    assert m["anchor"]["new_samples"] == 100
    assert m["anchor"]["moved"] == 0
    if protocol == "ratio":
        assert m["sizes"] == {"train": 880, "val": 110, "test": 110}


def test_anchor_conflict_moves_the_minority_and_says_so(tmp_path: Path) -> None:
    rows, labels = dataset(200)
    far = []  # pairs 10 pHash bits apart: not linked at image_radius 6
    for k in range(20):
        base = rand64(f"far{k}")
        x, y = row(f"fx{k}", phash=base), row(f"fy{k}", phash=flip(base, range(10)))
        rows += [x, y]
        labels[x["sample_id"]] = labels[y["sample_id"]] = ["l01"]
        far.append((x, y))
    p = params(image_radius=6)
    old, _ = split(tmp_path / "v1", rows, labels, p)
    x, y = next(
        (x, y) for x, y in far if old[x["sample_id"]]["split"] != old[y["sample_id"]]["split"]
    )
    bridge = row("bridge", phash=flip(x["phash"], range(5)))  # 5 bits from each
    labels[bridge["sample_id"]] = ["l01"]
    anchor = str(tmp_path / "v1" / "split" / "assignments.parquet")
    assign, m = split(
        tmp_path / "v2", [*rows, bridge], labels, dataclasses.replace(p, anchor=anchor)
    )
    trio = {assign[r["sample_id"]]["split"] for r in (x, y, bridge)}
    assert len(trio) == 1
    assert m["anchor"]["moved"] == 1
    assert m["anchor"]["moved_samples"][0]["sample_id"] in (x["sample_id"], y["sample_id"])
    assert m["leakage"]["total"] == 0
    unmoved = [s for s in old if s not in (x["sample_id"], y["sample_id"])]
    assert all(assign[s]["split"] == old[s]["split"] for s in unmoved)


# --------------------------------------------------------------------------- determinism


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    rows, labels = dataset(300)
    a, _ = split(tmp_path / "a", rows, labels, params())
    first = (tmp_path / "a" / "split" / "assignments.parquet").read_bytes()
    metrics = (tmp_path / "a" / "metrics" / "split.json").read_bytes()
    split(tmp_path / "a", rows[::-1], labels, params())  # input order does not matter
    assert (tmp_path / "a" / "split" / "assignments.parquet").read_bytes() == first
    assert (tmp_path / "a" / "metrics" / "split.json").read_bytes() == metrics
    b, _ = split(tmp_path / "b", rows, labels, params(seed=1))
    assert sum(a[s]["split"] != b[s]["split"] for s in a) > 30
    assert {x["seed"] for x in b.values()} == {1}


# --------------------------------------------------------------------------- bad input


def test_a_set_left_empty_is_an_error(tmp_path: Path) -> None:
    rows = [row(i) for i in range(2)]
    with pytest.raises(
        ValueError, match=r"would leave 'val', 'test' empty: sizes train=2, val=0, test=0"
    ):
        split(tmp_path / "a", rows, None, params(stratify=False))
    assert not (tmp_path / "a" / "split" / "assignments.parquet").exists()
    rows = [row(i) for i in range(50)]
    with pytest.raises(ValueError, match=r"query set of 100 .exactly 100. would leave too small"):
        split(tmp_path / "b", rows, None, params("hashing", stratify=False))
    big = [row(i) for i in range(300)]
    with pytest.raises(ValueError, match=r"training set of 500 .exactly 500. is larger than the"):
        split(tmp_path / "c", big, None, params("hashing", stratify=False))
    # one near-duplicate group holding everything cannot be split
    same = [row(i, phash=rand64("one")) for i in range(20)]
    with pytest.raises(ValueError, match="in 1 near-duplicate groups"):
        split(tmp_path / "d", same, None, params(stratify=False))


def test_missing_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cmrops clean"):
        run(params(), tmp_path / "none", None, tmp_path / "out")
    interim(tmp_path / "clean", [row(i) for i in range(10)])
    with pytest.raises(FileNotFoundError, match="cmrops label"):
        run(params(), tmp_path / "clean", tmp_path / "nolabels", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="anchor"):
        run(
            params(anchor="missing.parquet", stratify=False),
            tmp_path / "clean",
            None,
            tmp_path / "out",
            base_dir=tmp_path,
        )


def test_params_are_strict(tmp_path: Path) -> None:
    p = tmp_path / "params.yaml"
    protocols = "split:\n  protocol: x\n  protocols:\n    x: "
    cases = {
        protocols + "{kind: ratio, train: 0.8, val: 0.1, test: 0.2}\n": "must be 1",
        protocols + "{kind: hashing, query: 10, train: 5, val: 0.1}\n": "val",
        protocols + "{kind: hashing, query: 1.5, train: 5}\n": "fraction must lie in",
        protocols + "{kind: hashing, query: 10, train: 0}\n": "count must be >= 1",
        protocols + "{kind: hashing, query: {fraction: 0.1, maks: 9}, train: 5}\n": "maks",
        protocols + "{kind: hashing, query: {fraction: 0.1, max: 0}, train: 5}\n": "min <= max",
        "splt:\n  seed: 1\n": "unknown section.*'splt' .did you mean 'split'",
        "split:\n  protocol: nope\n": "not one of protocols",
        "split:\n  image_radus: 3\n": "image_radus",
    }
    for text, message in cases.items():
        p.write_text(text)
        with pytest.raises(ParamsError, match=message):
            load_section(p, "split", SplitParams)
    repo = Path(__file__).resolve().parents[1] / "params.yaml"
    # the pipeline anchors each release on the last one; the library default splits afresh
    assert load_section(repo, "split", SplitParams) == SplitParams(anchor="previous")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, labels = dataset(400)
    interim(tmp_path / "clean", rows)
    labelled(tmp_path / "labelled", labels)
    (tmp_path / "params.yaml").write_text(
        "split:\n  protocol: small\n  protocols:\n"
        "    small: {kind: hashing, query: 40, train: 200}\n"
    )
    metrics = tmp_path / "metrics" / "split.json"
    rc = cli.main(
        [
            "split",
            "--params",
            str(tmp_path / "params.yaml"),
            "--clean",
            str(tmp_path / "clean"),
            "--labelled",
            str(tmp_path / "labelled"),
            "--out",
            str(tmp_path / "split"),
            "--metrics",
            str(metrics),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "split (small, assigned): 400 samples" in out
    assert read_json(metrics)["sizes"] == {"query": 40, "database": 360, "train": 200}
    rc = cli.main(
        ["split", "--params", str(tmp_path / "params.yaml"), "--clean", str(tmp_path / "x")]
    )
    assert rc == 2
    assert "run `cmrops clean` first" in capsys.readouterr().err


def test_protocol_spec() -> None:
    assert RATIO.sets == ("train", "val", "test")
    assert HASHING.spec() == {"kind": "hashing", "query": 100, "train": 500}
    with pytest.raises(ValueError, match="fractions"):
        Protocol("ratio", train=0.0, val=0.5, test=0.5)
    assert dataclasses.replace(HASHING, query=5).query == 5


def test_sizes_given_as_capped_fractions_scale_with_the_data(tmp_path: Path) -> None:
    """One setting serves a tiny trial and a large release: a fraction, capped, recorded."""
    adaptive = Protocol("hashing", query=SetSize(0.15, max=200), train=SetSize(0.8, max=1000))

    def sizes(n: int) -> dict[str, Any]:
        p = SplitParams(protocol="h", protocols={"h": adaptive}, stratify=False)
        _, m = split(tmp_path / str(n), [row(f"s{n}-{i}") for i in range(n)], None, p)
        return m

    small = sizes(40)
    assert small["sizes"] == {"query": 6, "database": 34, "train": 27}
    assert small["sizes_chosen"]["query"] == 6
    assert "0.15 of the samples, at most 200" in small["sizes_chosen"]["query_rule"]
    large = sizes(2000)
    assert large["sizes"]["query"] == 200  # the cap
    assert large["sizes"]["train"] == 1000
    # a plain fraction works too, and a count stays exact
    assert resolve_size(0.5, 11) == 6
    assert resolve_size(7, 1000) == 7
    assert resolve_size(SetSize(0.01, max=50, min=3), 20) == 3
    with pytest.raises(ValueError, match=r"too few for the hashing protocol .* at least 8"):
        sizes(5)
    with pytest.raises(ValueError, match="fraction must lie in"):
        SetSize(1.5)
