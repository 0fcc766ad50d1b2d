"""The clean stage's rules on hand-made samples: each rule on and off, evidence, not-run reporting,
the representative rule, the invariants, idempotence and bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from cmrops import cli
from cmrops.schema import CLEAN_GROUPS, INTERIM_SAMPLES, QUARANTINE
from cmrops.stages.clean import (
    CaptionLengthRule,
    CleanParams,
    LabelDisagreementRule,
    LanguageRule,
    MaxAspectRule,
    MinSideRule,
    MismatchRule,
    NearImageRule,
    run,
)
from tests.clean_helpers import flip, interim, labelled, rand64, read_json, row, sid

P = CleanParams()
NO_LABEL_RULES = dataclasses.replace(
    P,
    irrelevant=dataclasses.replace(P.irrelevant, enabled=False),
    label_disagreement=dataclasses.replace(P.label_disagreement, enabled=False),
)


def fake_language(text: str) -> str:
    """A 'detector' for the caption_language rule: French when it says 'le'."""
    return "fr" if " le " in f" {text} " else "en"


def _clean(
    tmp: Path,
    rows: list[dict[str, Any]],
    params: CleanParams = NO_LABEL_RULES,
    labels: dict[str, list[str]] | None = None,
    **kw: Any,
) -> tuple[dict[str, Any], Path]:
    inter = interim(tmp / "interim", rows, **kw)
    lab = labelled(tmp / "labelled", labels) if labels is not None else None
    out = tmp / "clean"
    m = run(params, inter, lab, out, metrics_path=tmp / "metrics" / "quality.json")
    return m, out


def _quarantine(out: Path) -> dict[str, dict[str, Any]]:
    t = pq.read_table(out / "quarantine.parquet")
    assert t.schema.equals(QUARANTINE)
    return {r["sample_id"]: {**r, "evidence": json.loads(r["evidence"])} for r in t.to_pylist()}


def _kept(out: Path) -> list[str]:
    return pq.read_table(out / "samples.parquet")["sample_id"].to_pylist()


# --------------------------------------------------------------------------- duplicates


def test_exact_and_near_duplicates_keep_the_largest_image(tmp_path: Path) -> None:
    base = rand64("base")
    rows = [
        row("a", phash=base, dhash=7),  # 100x100
        row("b", phash=base, dhash=7, image_sha256=row("a")["image_sha256"]),  # same bytes as a
        row("c", phash=flip(base, [1, 5, 9]), dhash=flip(7, [3]), width=200, height=150),
        row("lone"),
    ]
    m, out = _clean(tmp_path, rows)
    q = _quarantine(out)
    assert _kept(out) == sorted([sid("c"), sid("lone")])
    assert set(q) == {sid("a"), sid("b")}
    for name in ("a", "b"):
        e = q[sid(name)]["evidence"]
        assert q[sid(name)]["reason"] == "near_duplicate_image"  # the kept one has other bytes
        assert e["kept"] == sid("c")
        assert e["phash_distance"] == 3
        assert e["dhash_distance"] == 1
        assert e["threshold"]["radius"] == P.near_duplicate_image.radius
        assert e["group_size"] == 3
        assert e["kept_resolution"] == 200 * 150
    assert m["rules"]["near_duplicate_image"]["dropped"] == 2
    assert m["duplicates"]["image_groups"] == {"3": 1}
    groups = pq.read_table(out / "groups.parquet")
    assert groups.schema.equals(CLEAN_GROUPS)
    g = {r["sample_id"]: r for r in groups.to_pylist()}
    assert set(g) == {sid("a"), sid("b"), sid("c")}  # kept and dropped members
    assert {r["image_group"] for r in g.values()} == {min(sid("a"), sid("b"), sid("c"))}
    assert g[sid("c")]["kept"]
    assert not g[sid("a")]["kept"]


def test_identical_bytes_of_the_kept_sample_are_exact_duplicates(tmp_path: Path) -> None:
    rows = [
        row("x"),
        row(
            "y",
            image_sha256=row("x")["image_sha256"],
            phash=row("x")["phash"],
            dhash=row("x")["dhash"],
        ),
    ]
    m, out = _clean(tmp_path, rows)
    q = _quarantine(out)
    keep = min(sid("x"), sid("y"))  # same resolution: the smallest sample_id stays
    drop = max(sid("x"), sid("y"))
    assert _kept(out) == [keep]
    assert q[drop]["reason"] == "exact_duplicate"
    assert q[drop]["evidence"]["identical_bytes"] is True
    assert q[drop]["evidence"]["kept"] == keep
    assert m["quarantined_by_reason"] == {"exact_duplicate": 1}


def test_exact_duplicate_rule_off_lets_near_rule_decide(tmp_path: Path) -> None:
    rows = [
        row("x"),
        row(
            "y",
            image_sha256=row("x")["image_sha256"],
            phash=row("x")["phash"],
            dhash=row("x")["dhash"],
        ),
    ]
    params = dataclasses.replace(
        NO_LABEL_RULES, exact_duplicate=dataclasses.replace(P.exact_duplicate, enabled=False)
    )
    m, out = _clean(tmp_path, rows, params)
    assert m["quarantined_by_reason"] == {"near_duplicate_image": 1}
    assert m["rules"]["exact_duplicate"]["status"] == "off"
    both_off = dataclasses.replace(params, near_duplicate_image=NearImageRule(enabled=False))
    m, out = _clean(tmp_path / "off", rows, both_off)
    assert m["quarantined"] == 0
    assert len(_kept(out)) == 2


def test_dhash_confirmation_rejects_a_phash_collision(tmp_path: Path) -> None:
    base = rand64("collide")
    rows = [row("p", phash=base, dhash=0), row("q", phash=flip(base, [0, 1]), dhash=(1 << 40) - 1)]
    m, _out = _clean(tmp_path, rows)
    assert m["quarantined"] == 0
    assert m["duplicates"]["near_image_pairs"] == {
        "candidates": 1,
        "after_dhash": 0,
        "kept": 0,
        "cosine_confirmation": "not run: preprocess wrote no image embeddings",
    }
    no_confirm = dataclasses.replace(
        NO_LABEL_RULES, near_duplicate_image=NearImageRule(dhash_radius=None)
    )
    m, _ = _clean(tmp_path / "b", rows, no_confirm)
    assert m["quarantined_by_reason"] == {"near_duplicate_image": 1}


def test_image_embedding_confirmation(tmp_path: Path) -> None:
    base = rand64("emb")
    rows = [
        row("u", phash=base, dhash=1),
        row("v", phash=base, dhash=1),
        row("w", phash=flip(base, [3]), dhash=1),
    ]
    img = np.array([[1.0, 0.0], [0.99, np.sqrt(1 - 0.99**2)], [0.0, 1.0]])  # u~v, w far
    m, out = _clean(tmp_path, rows, image=img, text=img, aligned=False)
    assert m["duplicates"]["near_image_pairs"]["after_cosine"] == 1
    q = _quarantine(out)
    assert len(q) == 1
    assert next(iter(q.values()))["evidence"]["kept"] == min(sid("u"), sid("v"))
    assert sid("w") in _kept(out)


def test_caption_near_duplicates_are_reported_not_dropped(tmp_path: Path) -> None:
    same = rand64("caption")
    rows = [row("i", caption_simhash=same), row("j", caption_simhash=flip(same, [2])), row("k")]
    m, out = _clean(tmp_path, rows)
    assert m["quarantined"] == 0
    assert len(_kept(out)) == 3
    rep = m["rules"]["near_duplicate_caption"]
    assert rep["status"] == "run"
    assert rep["drops"] is False
    assert rep["flagged"] == 2
    assert rep["report"]["pairs_image_differs"] == 1
    assert rep["report"]["examples_image_differs"][0]["caption_distance"] == 1
    groups = {r["sample_id"]: r for r in pq.read_table(out / "groups.parquet").to_pylist()}
    assert groups[sid("i")]["caption_group"] == groups[sid("j")]["caption_group"]
    assert groups[sid("i")]["image_group"] is None
    assert groups[sid("i")]["kept"]


def test_with_caption_mode_drops_only_when_image_and_caption_repeat(tmp_path: Path) -> None:
    img, cap = rand64("img"), rand64("cap")
    rows = [
        row("orig", phash=img, dhash=5, caption_simhash=cap),
        row("both", phash=flip(img, [4]), dhash=5, caption_simhash=flip(cap, [1])),
        row("image_only", phash=flip(img, [7]), dhash=5),
    ]
    params = dataclasses.replace(
        NO_LABEL_RULES, near_duplicate_image=NearImageRule(drop="with_caption")
    )
    m, out = _clean(tmp_path, rows, params)
    q = _quarantine(out)
    assert {v["reason"] for v in q.values()} == {"near_duplicate_image_caption"}
    assert set(q) == {max(sid("orig"), sid("both"))}
    assert q[max(sid("orig"), sid("both"))]["evidence"]["caption_duplicate"] is True
    assert sid("image_only") in _kept(out)
    assert m["rules"]["near_duplicate_image"]["status"] == "off"
    m2, out2 = _clean(tmp_path / "always", rows)  # default drop: always
    assert len(_quarantine(out2)) == 2
    assert m2["quarantined_by_reason"] == {"near_duplicate_image": 2}


# --------------------------------------------------------------------------- per-sample rules


def test_quality_rules_flag_and_explain(tmp_path: Path) -> None:
    rows = [
        row("tiny", width=30, height=100),
        row("wide", width=900, height=100),
        row("short", captions=["a cat"]),
        row("long", captions=["word " * 300]),
        row("mixed", captions=["a cat", "a cat sitting on a mat"]),  # one caption in range
        row("fine"),
    ]
    m, out = _clean(tmp_path, rows)
    q = _quarantine(out)
    assert {k: v["reason"] for k, v in q.items()} == {
        sid("tiny"): "min_side",
        sid("wide"): "max_aspect",
        sid("short"): "caption_length",
        sid("long"): "caption_length",
    }
    assert q[sid("tiny")]["evidence"] == {"threshold": {"min_side": 32}, "width": 30, "height": 100}
    assert q[sid("wide")]["evidence"]["aspect"] == 9.0
    assert q[sid("short")]["evidence"]["token_counts"] == [2]
    assert "tokens" in q[sid("short")]["detail"]
    assert m["rules"]["caption_length"]["report"] == {"captions_out_of_range": 3}
    off = dataclasses.replace(
        NO_LABEL_RULES,
        min_side=MinSideRule(enabled=False),
        max_aspect=MaxAspectRule(enabled=False),
        caption_length=CaptionLengthRule(enabled=False),
    )
    m, out = _clean(tmp_path / "off", rows, off)
    assert m["quarantined"] == 0
    assert {m["rules"][r]["status"] for r in ("min_side", "max_aspect", "caption_length")} == {
        "off"
    }
    tight = dataclasses.replace(NO_LABEL_RULES, caption_length=CaptionLengthRule(max_tokens=None))
    m, _ = _clean(tmp_path / "nomax", rows, tight)
    assert m["rules"]["caption_length"]["flagged"] == 1  # only "short"


def test_first_rule_in_order_claims_and_others_are_noted(tmp_path: Path) -> None:
    rows = [row("both", width=10, height=100, captions=["hi"]), row("ok")]
    m, out = _clean(tmp_path, rows)
    q = _quarantine(out)[sid("both")]
    assert q["reason"] == "min_side"
    assert q["evidence"]["also_flagged_by"] == ["max_aspect", "caption_length"]
    assert m["rules"]["caption_length"]["flagged"] == 1
    assert m["rules"]["caption_length"]["dropped"] == 0


def test_language_rule_not_run_without_detector_and_run_with_one(tmp_path: Path) -> None:
    rows = [row("en"), row("fr", captions=["le chat est sur le tapis"])]
    m, out = _clean(tmp_path, rows)
    assert m["rules"]["caption_language"]["status"] == "not_run"
    assert "detector" in m["not_run"]["caption_language"]
    assert m["quarantined"] == 0
    with_detector = dataclasses.replace(
        NO_LABEL_RULES, caption_language=LanguageRule(detector=f"{__name__}:fake_language")
    )
    m, out = _clean(tmp_path / "d", rows, with_detector)
    assert m["quarantined_by_reason"] == {"caption_language": 1}
    assert _quarantine(out)[sid("fr")]["evidence"]["languages"] == ["fr"]
    assert m["rules"]["caption_language"]["report"]["caption_languages"] == {"en": 1, "fr": 1}
    bad = dataclasses.replace(NO_LABEL_RULES, caption_language=LanguageRule(detector="nope:x"))
    with pytest.raises(ValueError, match="cannot be loaded"):
        _clean(tmp_path / "bad", rows, bad)


def test_mismatch_not_run_without_aligned_encoder(tmp_path: Path) -> None:
    rows = [row("a"), row("b")]
    m, _ = _clean(tmp_path, rows)
    assert m["rules"]["mismatch"]["status"] == "not_run"
    assert "no embeddings" in m["not_run"]["mismatch"]
    img = np.eye(2)
    m, _ = _clean(tmp_path / "sep", rows, image=img, text=img[::-1], aligned=False)
    assert m["rules"]["mismatch"]["status"] == "not_run"
    assert "not aligned" in m["not_run"]["mismatch"]
    assert m["quarantined"] == 0  # never silently "passed": reported, nothing dropped


def test_mismatch_drops_low_similarity_with_aligned_encoder(tmp_path: Path) -> None:
    rows = [row("match"), row("swap"), row("ok")]
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    txt = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    # the default threshold (auto) is the align stage's calibration: without its output, not run
    m, _ = _clean(tmp_path / "auto", rows, image=img, text=txt, aligned=True)
    assert m["rules"]["mismatch"]["status"] == "not_run"
    assert "min_similarity: auto needs the align stage" in m["not_run"]["mismatch"]
    # an aligned dual encoder without the align stage: the identity, with a numeric threshold
    fixed = dataclasses.replace(NO_LABEL_RULES, mismatch=MismatchRule(min_similarity=0.2))
    m, out = _clean(tmp_path, rows, fixed, image=img, text=txt, aligned=True)
    assert m["rules"]["mismatch"]["status"] == "run"
    q = _quarantine(out)
    assert set(q) == {sid("swap")}
    assert q[sid("swap")]["evidence"]["similarity"] == 0.0
    assert q[sid("swap")]["evidence"]["threshold"] == {"min_similarity": 0.2}
    loose = dataclasses.replace(NO_LABEL_RULES, mismatch=MismatchRule(min_similarity=-0.5))
    m, _ = _clean(tmp_path / "loose", rows, loose, image=img, text=txt, aligned=True)
    assert m["quarantined"] == 0


# --------------------------------------------------------------------------- label rules


def _label_rows() -> tuple[list[dict[str, Any]], dict[str, list[str]], dict[str, Any]]:
    rows = [row(x) for x in ("cat", "swapped", "partial", "subset", "nolabel", "nokeyword")]
    effective = {
        sid("cat"): ["cat"],
        sid("swapped"): ["dog"],
        sid("partial"): ["cat", "dog"],
        sid("subset"): ["bird", "cat", "dog"],
        sid("nokeyword"): ["dog"],
    }
    methods = {
        "provided": {
            sid("cat"): ["cat"],
            sid("swapped"): ["dog"],
            sid("partial"): ["cat", "dog"],
            sid("subset"): ["bird", "cat", "dog"],
            sid("nokeyword"): ["dog"],
        },
        "keyword": {
            sid("cat"): ["cat"],
            sid("swapped"): ["bird"],
            sid("partial"): ["cat", "bird"],  # overlap 1/2
            sid("subset"): ["cat"],  # captions name one of three objects: agreement (overlap 1)
        },
    }
    return rows, effective, methods


def test_label_disagreement_and_irrelevant(tmp_path: Path) -> None:
    rows, effective, methods = _label_rows()
    inter = interim(tmp_path / "interim", rows)
    lab = labelled(
        tmp_path / "labelled", effective, vocabulary=["bird", "cat", "dog"], methods=methods
    )
    m = run(P, inter, lab, tmp_path / "clean")
    q = _quarantine(tmp_path / "clean")
    assert {k: v["reason"] for k, v in q.items()} == {
        sid("swapped"): "label_disagreement",
        sid("nolabel"): "irrelevant",
    }
    e = q[sid("swapped")]["evidence"]
    assert e["provided"] == ["dog"]
    assert e["keyword"] == ["bird"]
    assert e["overlap"] == 0.0
    assert m["rules"]["label_disagreement"]["report"]["compared"] == 4
    assert (tmp_path / "clean" / "quality.json").is_file()  # default metrics path
    # reported only
    report_only = dataclasses.replace(P, label_disagreement=LabelDisagreementRule(drop=False))
    m = run(report_only, inter, lab, tmp_path / "clean2")
    assert m["rules"]["label_disagreement"]["flagged"] == 1
    assert m["quarantined_by_reason"] == {"irrelevant": 1}
    # a looser threshold also flags the partial overlap, never the subset
    loose = dataclasses.replace(P, label_disagreement=LabelDisagreementRule(max_overlap=0.9))
    m = run(loose, inter, lab, tmp_path / "clean3")
    assert m["rules"]["label_disagreement"]["flagged"] == 2


def test_label_rules_need_the_label_stage(tmp_path: Path) -> None:
    rows, effective, methods = _label_rows()
    inter = interim(tmp_path / "interim", rows)
    with pytest.raises(ValueError, match="--labelled"):
        run(P, inter, None, tmp_path / "clean")
    with pytest.raises(FileNotFoundError, match="cmrops label"):
        run(P, inter, tmp_path / "missing", tmp_path / "clean")
    lab = labelled(tmp_path / "labelled", effective, vocabulary=[], methods=methods)
    with pytest.raises(ValueError, match="vocabulary is empty"):
        run(P, inter, lab, tmp_path / "clean")
    # without keyword evidence the disagreement rule is reported as not run
    lab = labelled(tmp_path / "lab2", effective, methods={"provided": methods["provided"]})
    m = run(P, inter, lab, tmp_path / "clean")
    assert m["rules"]["label_disagreement"]["status"] == "not_run"
    assert "keyword" in m["not_run"]["label_disagreement"]


def test_unknown_labels_are_reported_not_fatal(tmp_path: Path) -> None:
    rows = [row("a"), row("b")]
    inter = interim(tmp_path / "interim", rows)
    lab = labelled(
        tmp_path / "labelled",
        {sid("a"): ["cat"], sid("b"): ["zebra"], "stale": ["cat"]},
        vocabulary=["cat"],
        methods={},
    )
    m = run(P, inter, lab, tmp_path / "clean")
    assert m["labels"]["labels_outside_vocabulary"] == {"zebra": 1}
    assert m["labels"]["label_rows_of_unknown_samples"] == 1
    assert m["quarantined_by_reason"] == {"irrelevant": 1}


# --------------------------------------------------------------------------- stage contract


def test_outputs_invariant_and_idempotent(tmp_path: Path) -> None:
    base = rand64("dup")
    rows = [row(i) for i in range(12)] + [
        row("d1", phash=base, dhash=3),
        row("d2", phash=flip(base, [0]), dhash=3),
        row("small", width=8, height=8),
    ]
    rows = rows[::-1]  # unsorted input
    m, out = _clean(tmp_path, rows)
    kept = pq.read_table(out / "samples.parquet")
    assert kept.schema.names == INTERIM_SAMPLES.names
    ids = kept["sample_id"].to_pylist()
    assert ids == sorted(ids)
    q = pq.read_table(out / "quarantine.parquet")
    assert set(q["stage"].to_pylist()) == {"clean"}
    assert m["inputs"] == len(rows) == kept.num_rows + q.num_rows == m["kept"] + m["quarantined"]
    assert not set(ids) & set(q["sample_id"].to_pylist())
    files = ("samples.parquet", "quarantine.parquet", "groups.parquet")
    first = {f: (out / f).read_bytes() for f in files}
    metrics = (tmp_path / "metrics" / "quality.json").read_bytes()
    run(
        NO_LABEL_RULES,
        tmp_path / "interim",
        None,
        out,
        metrics_path=tmp_path / "metrics" / "quality.json",
    )
    assert {f: (out / f).read_bytes() for f in files} == first
    assert (tmp_path / "metrics" / "quality.json").read_bytes() == metrics


def test_cleaning_everything_away_is_an_error(tmp_path: Path) -> None:
    rows = [row("a", width=4), row("b", captions=["x"])]
    with pytest.raises(
        ValueError, match=r"would drop all 2 samples \(caption_length: 1, min_side: 1\)"
    ):
        _clean(tmp_path, rows)
    assert not (tmp_path / "clean" / "samples.parquet").exists()


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cmrops preprocess"):
        run(NO_LABEL_RULES, tmp_path / "nothing", None, tmp_path / "out")
    interim(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no samples"):
        run(NO_LABEL_RULES, tmp_path / "empty", None, tmp_path / "out")
    rows = [row("a"), row("a")]
    interim(tmp_path / "dup", rows)
    with pytest.raises(ValueError, match="sample_id repeated"):
        run(NO_LABEL_RULES, tmp_path / "dup", None, tmp_path / "out")


def test_params_are_strict(tmp_path: Path) -> None:
    from cmrops.params import ParamsError, load_section

    p = tmp_path / "params.yaml"
    p.write_text("clean:\n  near_duplicate_image: {radius: 4, typo: 1}\n")
    with pytest.raises(ParamsError, match="typo"):
        load_section(p, "clean", CleanParams)
    p.write_text("clean:\n  near_duplicate_image: {drop: sometimes}\n")
    with pytest.raises(ParamsError, match="sometimes"):
        load_section(p, "clean", CleanParams)
    p.write_text("clean:\n  caption_length: {min_tokens: 5, max_tokens: 2}\n")
    with pytest.raises(ParamsError, match="max_tokens"):
        load_section(p, "clean", CleanParams)
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert load_section(repo_params, "clean", CleanParams) == CleanParams()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, effective, methods = _label_rows()
    interim(tmp_path / "interim", rows)
    labelled(tmp_path / "labelled", effective, vocabulary=["bird", "cat", "dog"], methods=methods)
    params = tmp_path / "params.yaml"
    params.write_text("clean:\n  min_side: {pixels: 16}\n")
    metrics = tmp_path / "metrics" / "quality.json"
    rc = cli.main(
        [
            "clean",
            "--params",
            str(params),
            "--interim",
            str(tmp_path / "interim"),
            "--labelled",
            str(tmp_path / "labelled"),
            "--align",
            str(tmp_path / "no-align"),
            "--raw",
            str(tmp_path / "no-raw"),
            "--out",
            str(tmp_path / "clean"),
            "--metrics",
            str(metrics),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "clean: 6 in, 4 kept, 2 quarantined" in out
    assert "mismatch not run" in out
    assert read_json(metrics)["rules"]["min_side"]["threshold"] == {"min_side": 16}
    rc = cli.main(
        [
            "clean",
            "--params",
            str(params),
            "--interim",
            str(tmp_path / "nothing"),
            "--labelled",
            str(tmp_path / "labelled"),
            "--out",
            str(tmp_path / "c2"),
        ]
    )
    assert rc == 2
    assert "run `cmrops preprocess` first" in capsys.readouterr().err


def test_a_large_identical_group_is_grouped_without_all_its_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """270 copies of one image (one caption too) are more than graph.MAX_CLASS: searched through
    their first row, 269 candidates instead of 36,315; groups, drops and evidence are those of
    every pair (compared with a run that lists them all)."""
    from cmrops.cleaning import graph

    base, d0, s0 = rand64("copy"), rand64("copy-d"), rand64("copy-s")
    same = {
        "image_sha256": row("copy-0")["image_sha256"],
        "phash": base,
        "dhash": d0,
        "caption_simhash": s0,
        "captions": ["one caption for every copy"],
    }
    rows = [row(f"copy-{i}", **same) for i in range(270)]
    rows.append(row("bigger", phash=flip(base, [2, 7]), dhash=flip(d0, [4]), width=300))
    rows += [row(f"lone-{i}") for i in range(3)]
    m, out = _clean(tmp_path / "collapsed", rows)
    monkeypatch.setattr(graph, "MAX_CLASS", 10**9)
    m_all, out_all = _clean(tmp_path / "all", rows)

    dup, dup_all = m["duplicates"], m_all["duplicates"]
    assert dup["collapsed_identical_images"] == {"classes": 1, "rows": 270, "max_class": 256}
    assert dup["collapsed_identical_captions"]["rows"] == 270
    assert dup["near_image_pairs"]["candidates"] == 269 + 1  # the star and the bigger copy
    assert dup_all["near_image_pairs"]["candidates"] == 270 * 269 // 2 + 270
    assert "collapsed_identical_images" not in dup_all
    assert (
        _kept(out)
        == _kept(out_all)
        == sorted([sid("bigger")] + [sid(f"lone-{i}") for i in range(3)])
    )
    for name in ("samples.parquet", "quarantine.parquet", "groups.parquet"):
        assert (out / name).read_bytes() == (out_all / name).read_bytes(), name
    assert dup["image_groups"] == dup_all["image_groups"] == {"271": 1}
    assert m["quarantined_by_reason"] == m_all["quarantined_by_reason"]


def test_pairs_within_links_30000_equal_hashes_through_one_row() -> None:
    """The 449,985,000 pairs of 30,000 equal hashes (7.2 GB) become 29,999: the same single
    component; a hash close to them joins it; max_class=0 would list every pair."""
    from cmrops.cleaning.graph import collapse_identical, components, pairs_within

    h = np.full(30_001, rand64("same"), np.uint64)
    h[-1] = flip(int(h[0]), [3])
    pairs, dist = pairs_within(h, 2)
    assert len(pairs) == 29_999 + 1
    assert pairs[-1].tolist() == [0, 30_000]
    assert not dist[:-1].any()
    assert (components(len(h), pairs) == 0).all()
    c = collapse_identical(h)
    assert (c.classes, c.rows, int(c.keep.sum())) == (1, 30_000, 2)
