"""The label stage end to end on small hand-made interim folders (and the COCO sample)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmrops import cli
from cmrops.labels import EmptyVocabularyError, UnknownSampleKeyError
from cmrops.labels.induce import STOP_WORDS, InduceParams
from cmrops.schema import INTERIM_SAMPLES, LABEL_EVIDENCE, LABEL_SAMPLES, LABELS, QUARANTINE
from cmrops.stages.label import (
    KeywordParams,
    LabelParams,
    ManualFile,
    ReviewParams,
    ZeroShotParams,
    run,
)
from cmrops.text import normalize_captions

OUTPUTS = (
    "labels.parquet", "evidence.parquet", "sample_labels.parquet", "vocabulary.json",
    "review_queue.csv", "review_tasks.json", "review_config.xml", "review_log.json",
    "metrics.json",
)  # fmt: skip


@dataclass(frozen=True)
class S:
    key: str
    captions: tuple[str, ...]
    labels: tuple[str, ...] = ()
    source: str = "test"
    feature_row: int = -1
    sample_id: str | None = None  # default: derived from source and key

    @property
    def sid(self) -> str:
        if self.sample_id is not None:
            return self.sample_id
        return hashlib.sha256(f"{self.source}/{self.key}".encode()).hexdigest()[:16]


def write_interim(
    d: Path,
    samples: list[S],
    meta: dict | None = None,
    image: np.ndarray | None = None,
    quarantined: tuple[S, ...] = (),
) -> Path:
    """An interim folder as preprocess writes it (only what labelling reads is meaningful)."""
    rows = []
    for s in samples:
        caps, _ = normalize_captions(s.captions, 1000)
        rows.append(
            {
                "sample_id": s.sid, "source": s.source, "source_key": s.key,
                "image_sha256": "0" * 64, "image_path": f"objects/{s.sid}", "image_bytes": 1,
                "captions": list(s.captions), "labels": list(s.labels), "extra": "{}",
                "width": 64, "height": 64, "format": "PNG", "n_frames": 1, "phash": 0,
                "dhash": 0, "caption_simhash": 0, "captions_norm": caps, "caption_chars_cut": 0,
                "token_counts": [len(c.split()) for c in caps], "feature_row": s.feature_row,
            }
        )  # fmt: skip
    d.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=INTERIM_SAMPLES).sort_by("sample_id")
    pq.write_table(table, d / "samples.parquet")
    q = [
        {"sample_id": s.sid, "stage": "preprocess", "source": s.source, "source_key": s.key,
         "reason": "truncated_image", "detail": "", "evidence": "{}"}
        for s in quarantined
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(q, schema=QUARANTINE), d / "quarantine.parquet")
    if meta is not None:
        (d / "features").mkdir(exist_ok=True)
        (d / "features" / "meta.json").write_text(json.dumps(meta))
    if image is not None:
        np.save(d / "features" / "image.npy", image.astype(np.float32))
    return d


SHAPES = [
    S("a.png", ("a red circle", "A red circle on a plain background."), ("circle", "red")),
    S("b.png", ("two blue squares", "blue squares on a grey background"), ("blue", "square")),
    S("c.png", ("a green star", "a gray star"), ("green", "grey", "star")),  # synonym gray
    # swapped: the captions describe another image
    S("d.png", ("a yellow triangle", "three yellow triangles"), ("circle", "red")),
    S("e.png", ("white noise",)),  # no label at all
    S("f.png", ("a blue circle", "blue circles", "a circle")),  # no provided labels
    S("g.png", ("a yellow triangle",), ("triangle", "yellow")),
]
PARAMS = LabelParams(synonyms={"grey": ("gray",)})


def _read(out: Path, name: str) -> pa.Table:
    return pq.read_table(out / name)


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _labels(out: Path) -> dict[str, set[str]]:
    got: dict[str, set[str]] = {}
    for r in _read(out, "labels.parquet").to_pylist():
        got.setdefault(r["sample_id"], set()).add(r["label"])
    return got


def test_outputs_follow_the_contracts_and_account_for_every_sample(tmp_path):
    interim = write_interim(tmp_path / "interim", SHAPES)
    out = tmp_path / "labelled"
    m = run(PARAMS, interim, out)
    assert {p.name for p in out.iterdir()} == set(OUTPUTS)
    labels = _read(out, "labels.parquet")
    assert labels.schema.equals(LABELS)
    rows = labels.to_pylist()
    assert [(r["sample_id"], r["label"]) for r in rows] == sorted(
        (r["sample_id"], r["label"]) for r in rows
    )
    assert _read(out, "evidence.parquet").schema.equals(LABEL_EVIDENCE)
    per_sample = _read(out, "sample_labels.parquet")
    assert per_sample.schema.equals(LABEL_SAMPLES)
    assert per_sample["sample_id"].to_pylist() == sorted(s.sid for s in SHAPES)  # none dropped

    got = _labels(out)
    by_key = {s.key: s for s in SHAPES}
    assert got[by_key["a.png"].sid] == {"circle", "red"}  # provided, not diluted by keywords
    assert got[by_key["c.png"].sid] == {"green", "grey", "star"}
    assert got[by_key["f.png"].sid] == {"blue", "circle"}  # keywords fill in
    assert by_key["e.png"].sid not in got
    f_rows = [r for r in rows if r["sample_id"] == by_key["f.png"].sid]
    assert {(r["label"], r["method"], r["confidence"]) for r in f_rows} == {
        ("blue", "keyword", 2 / 3), ("circle", "keyword", 1.0)
    }  # fmt: skip
    assert {r["source"] for r in rows} == {"auto"}

    assert m["samples"] == 7
    assert m["unlabelled"] == 1
    assert m["labelled"] == 6
    assert m["decided_by"] == {"reviewed": 0, "manual": 0, "auto": 6, "none": 1}
    assert m["per_method"] == {"keyword": 2, "provided": 11}
    assert m["per_label"]["circle"] == 3
    assert m["methods"]["zeroshot"] == {"run": False, "reason": "no features/meta.json in "
                                        "the interim folder"}  # fmt: skip
    assert set(m["agreement"]) == {"provided~keyword"}
    assert m["agreement"]["provided~keyword"]["samples"] == 5

    queue = _csv_rows(out / "review_queue.csv")
    assert queue[0]["sample_id"] == by_key["d.png"].sid  # the swapped caption comes first
    assert queue[0]["reason"] == "disagree"
    assert queue[0]["priority"] == "1.000000"
    assert "provided {circle, red} vs keyword {triangle, yellow}" in queue[0]["detail"]
    assert queue[0]["answer"] == ""
    reasons = {q["sample_id"]: q["reason"] for q in queue}
    assert reasons[by_key["e.png"].sid] == "no_label"
    vocab = json.loads((out / "vocabulary.json").read_text())
    assert vocab["labels"] == [
        "blue", "circle", "green", "grey", "red", "square", "star", "triangle", "yellow"
    ]  # fmt: skip
    assert vocab["terms"]["grey"] == ["grey", "gray"]


def test_rerun_is_byte_identical(tmp_path):
    interim = write_interim(tmp_path / "interim", SHAPES)
    m1 = run(PARAMS, interim, tmp_path / "one")
    first = {n: (tmp_path / "one" / n).read_bytes() for n in OUTPUTS}
    m2 = run(PARAMS, interim, tmp_path / "one")
    run(PARAMS, interim, tmp_path / "two")
    assert m1 == m2
    assert first == {n: (tmp_path / "one" / n).read_bytes() for n in OUTPUTS}
    assert first == {n: (tmp_path / "two" / n).read_bytes() for n in OUTPUTS}
    assert not [p for p in (tmp_path / "one").iterdir() if p.name.endswith(".tmp")]


def test_keyword_labels_with_synonyms_threshold_and_union(tmp_path):
    samples = [
        S("1.jpg", ("A puppy on a sofa", "a dog on a couch", "a brown dog"), ("dog",)),
        S("2.jpg", ("two kittens", "cats sleeping", "a dog toy")),
        S("3.jpg", ("an empty room",)),
    ]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams(
        vocabulary=("cat", "couch"), synonyms={"dog": ("puppy",), "cat": ("kitten",),
                                               "couch": ("sofa",)},
        keyword=KeywordParams(threshold=0.5), combine="union",
    )  # fmt: skip
    m = run(params, interim, tmp_path / "out")
    got = _labels(tmp_path / "out")
    assert got[samples[0].sid] == {"dog", "couch"}  # provided dog + keyword couch (2 of 3)
    assert got[samples[1].sid] == {"cat"}  # dog in 1 of 3 captions: below 0.5
    ev = _read(tmp_path / "out", "evidence.parquet").to_pylist()
    weak = [r for r in ev if r["sample_id"] == samples[1].sid and r["label"] == "dog"]
    assert weak == [{
        "sample_id": samples[1].sid, "label": "dog", "source": "auto", "method": "keyword",
        "confidence": pytest.approx(1 / 3), "passed": False, "selected": False,
        "detail": '{"captions": 1, "of": 3}',
    }]  # fmt: skip
    dog = [r for r in ev if r["sample_id"] == samples[0].sid and r["label"] == "dog"]
    assert {(r["method"], r["selected"]) for r in dog} == {("provided", True), ("keyword", False)}
    assert m["unlabelled"] == 1


def test_manual_csv_and_jsonl_win_over_automatic_labels(tmp_path, caplog):
    samples = [
        S("img/1.jpg", ("a dog",), ("dog",)), S("img/2.jpg", ("a cat",), ("cat",)),
        S("img/3.jpg", ("a dog and a cat",), ("dog", "cat")), S("img/4.jpg", ("a bird",)),
    ]  # fmt: skip
    gone = S("img/9.jpg", ("lost",))
    interim = write_interim(tmp_path / "interim", samples, quarantined=(gone,))
    (tmp_path / "m.csv").write_text(
        "key,label\nimg/1.jpg,cat\nimg/1.jpg,Zebra\nimg/9.jpg,dog\n"  # source_key; quarantined
        f"{samples[3].sid},dog|CAT\n"  # sample_id, several labels, case-insensitive
    )
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"source_key": "img/3.jpg", "labels": []}) + "\n"  # explicitly no label
        + json.dumps({"key": "img/2.jpg", "label": "unicorn"}) + "\n"  # only unknown: no say
    )  # fmt: skip
    params = dataclasses.replace(PARAMS, manual=("m.csv", ManualFile("m.jsonl", format="jsonl")))
    with caplog.at_level(logging.WARNING):
        m = run(params, interim, tmp_path / "out", base_dir=tmp_path)
    got = _labels(tmp_path / "out")
    assert got[samples[0].sid] == {"cat"}  # manual replaces provided dog
    assert got[samples[1].sid] == {"cat"}  # unknown label only: stays automatic
    assert samples[2].sid not in got  # a human said no label applies
    assert got[samples[3].sid] == {"cat", "dog"}
    rows = _read(tmp_path / "out", "labels.parquet").to_pylist()
    assert {(r["source"], r["method"]) for r in rows if r["sample_id"] != samples[1].sid} == {
        ("manual", "manual")
    }
    ev = _read(tmp_path / "out", "evidence.parquet").to_pylist()
    cat4 = next(r for r in ev if r["sample_id"] == samples[3].sid and r["label"] == "cat")
    assert json.loads(cat4["detail"]) == {"at": "m.csv:5", "raw": "CAT"}
    assert m["unknown_labels"] == {"manual m.csv": {"Zebra": 1}, "manual m.jsonl": {"unicorn": 1}}
    assert m["decided_by"] == {"reviewed": 0, "manual": 3, "auto": 1, "none": 0}
    info = m["manual"]["m.csv"]
    assert info["statements"] == 4
    assert info["quarantined_keys"] == 1
    assert info["labels"] == 3
    assert "Zebra (1)" in caplog.text
    assert "quarantined upstream" in caplog.text
    queued = {r["sample_id"] for r in _csv_rows(tmp_path / "out/review_queue.csv")}
    assert not queued & {samples[0].sid, samples[2].sid, samples[3].sid}  # humans decided


def test_label_studio_export_as_manual_labels(tmp_path):
    samples = [S("x/1.jpg", ("a dog",), ("dog",)), S("x/2.jpg", ("a cat",), ("cat",))]
    interim = write_interim(tmp_path / "interim", samples)
    export = [
        {"id": 1, "data": {"image": "/data/1.jpg", "source_key": "x/1.jpg"},
         "annotations": [{"id": 10, "result": [{"from_name": "label", "to_name": "image",
                          "type": "taxonomy", "value": {"taxonomy": [["animal", "cat"]]}}]}]},
        {"id": 2, "data": {"image": "/data/2.jpg", "source_key": "x/2.jpg"}, "annotations": [],
         "predictions": [{"result": []}]},
    ]  # fmt: skip
    (tmp_path / "ls.json").write_text(json.dumps(export))
    run(dataclasses.replace(PARAMS, manual=("ls.json",)), interim, tmp_path / "out",
        base_dir=tmp_path)  # fmt: skip
    rows = _read(tmp_path / "out", "labels.parquet").to_pylist()
    assert [(r["sample_id"], r["label"], r["source"]) for r in rows] == sorted([
        (samples[0].sid, "cat", "manual"), (samples[1].sid, "cat", "auto"),
    ])  # fmt: skip


def test_unknown_labels_from_sources_are_reported_not_fatal(tmp_path, caplog):
    samples = [S("1", ("a dog",), ("dog", "zebra")), S("2", ("a zebra",), ("zebra",))]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams(vocabulary=("dog",), from_sources=False)
    with caplog.at_level(logging.WARNING):
        m = run(params, interim, tmp_path / "out")
    assert m["unknown_labels"] == {"provided": {"zebra": 2}}
    assert "2 unknown label(s) from provided" in caplog.text
    assert _labels(tmp_path / "out") == {samples[0].sid: {"dog"}}
    assert m["unlabelled"] == 1


def test_empty_vocabulary_is_an_error(tmp_path, capsys):
    interim = write_interim(tmp_path / "interim", [S("1", ("a dog",))])
    with pytest.raises(EmptyVocabularyError, match="vocabulary is empty"):
        run(LabelParams(induce=InduceParams(enabled=False)), interim, tmp_path / "out")
    # induction on with a fixed cap, but one sample: every word is in all of them, above max_df
    with pytest.raises(EmptyVocabularyError, match="none could be induced"):
        run(LabelParams(induce=InduceParams(max_df=0.25)), interim, tmp_path / "out")
    # the adaptive cap keeps a subject of every sample, but stop words alone induce nothing
    only_stop = write_interim(tmp_path / "stop", [S("1", ("a photo of the",))])
    with pytest.raises(EmptyVocabularyError, match="none could be induced"):
        run(LabelParams(), only_stop, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    params = tmp_path / "params.yaml"
    params.write_text("label:\n  vocabulary: []\n  induce: {enabled: false}\n")
    args = ["label", "--params", str(params), "--interim", str(interim), "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "cmrops label: error: the label vocabulary is empty" in capsys.readouterr().err


def test_unknown_review_keys_are_an_error_naming_file_and_keys(tmp_path):
    interim = write_interim(tmp_path / "interim", SHAPES)
    (tmp_path / "answers.csv").write_text(
        "sample_id,answer\n" + "".join(f"missing{i},red\n" for i in range(7)) + "a.png,red\n"
    )
    params = dataclasses.replace(PARAMS, review=ReviewParams(answers="answers.csv"))
    with pytest.raises(UnknownSampleKeyError) as e:
        run(params, interim, tmp_path / "out", base_dir=tmp_path)
    msg = str(e.value)
    assert msg.startswith("answers.csv: 7 sample key(s) not in the input: 'missing0' (unknown)")
    assert "'missing4'" in msg
    assert "'missing5'" not in msg
    assert "and 2 more" in msg
    assert not (tmp_path / "out").exists()


def test_review_round_trip_csv_and_label_studio(tmp_path):
    interim = write_interim(tmp_path / "interim", SHAPES)
    by_key = {s.key: s for s in SHAPES}
    out = tmp_path / "out"
    first = run(PARAMS, interim, out)
    queue = _csv_rows(out / "review_queue.csv")
    assert first["review"]["queue"] == len(queue) > 2
    # the reviewer fixes the swapped sample, confirms the noise image has no label, skips the rest
    answers = {by_key["d.png"].sid: "triangle | yellow", by_key["e.png"].sid: "-"}
    for row in queue:
        row["answer"] = answers.get(row["sample_id"], "")
    with (tmp_path / "answers.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(queue[0]))
        writer.writeheader()
        writer.writerows(queue)
    params = dataclasses.replace(PARAMS, review=ReviewParams(answers="answers.csv"))
    second = run(params, interim, out, base_dir=tmp_path)
    rows = [r for r in _read(out, "labels.parquet").to_pylist()
            if r["sample_id"] == by_key["d.png"].sid]  # fmt: skip
    assert [(r["label"], r["source"], r["method"], r["confidence"]) for r in rows] == [
        ("triangle", "reviewed", "review", 1.0), ("yellow", "reviewed", "review", 1.0)
    ]  # fmt: skip
    decided = dict(zip(*_read(out, "sample_labels.parquet").select(
        ["sample_id", "decided_by"]).to_pydict().values(), strict=True))  # fmt: skip
    assert decided[by_key["d.png"].sid] == decided[by_key["e.png"].sid] == "reviewed"
    assert second["decided_by"]["reviewed"] == 2
    assert second["unlabelled"] == 1
    assert second["review"]["answers"]["samples"] == 2
    requeued = {r["sample_id"] for r in _csv_rows(out / "review_queue.csv")}
    assert not requeued & set(answers)  # answered samples leave the queue

    # the same through Label Studio: import review_tasks.json, annotate, export
    tasks = json.loads((out / "review_tasks.json").read_text())
    assert {"image", "captions", "sample_id"} <= set(tasks[0]["data"])
    assert tasks[0]["predictions"][0]["result"][0]["from_name"] == "label"
    tasks[0]["annotations"] = [{"id": 1, "result": [{"from_name": "label", "to_name": "image",
                               "type": "choices", "value": {"choices": ["star"]}}]}]  # fmt: skip
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    params = dataclasses.replace(PARAMS, review=ReviewParams(answers="export.json"))
    run(params, interim, out, base_dir=tmp_path)
    assert _labels(out)[tasks[0]["data"]["sample_id"]] == {"star"}
    assert json.loads((out / "metrics.json").read_text())["per_source"]["reviewed"] == 1


def test_swapped_captions_and_noise_images_of_the_synthetic_source_lead_the_queue(tmp_path):
    from cmrops.sources.synthetic import DefectRates
    from cmrops.stages.collect import CollectParams, SourceSpec
    from cmrops.stages.collect import run as collect

    defects = DefectRates(exact_copy=0, exact_dup=0, near_copy=0, truncated=0, zero_byte=0,
                          swapped=0.05, empty_caption=0, noise_image=0.03)  # fmt: skip
    spec = SourceSpec(name="syn", kind="synthetic", n=200, seed=3, defects=defects)
    collect(CollectParams(sources=(spec,)), tmp_path / "raw")
    raw = pq.read_table(tmp_path / "raw" / "samples.parquet").to_pylist()
    samples = [S(r["source_key"], tuple(r["captions"]), tuple(r["labels"]), r["source"],
                 sample_id=r["sample_id"]) for r in raw]  # fmt: skip
    truth = pq.read_table(tmp_path / "raw" / "synthetic_truth.parquet").to_pylist()
    planted = {r["sample_id"] for r in truth if r["defect"] in ("swapped", "noise_image")}
    assert len(planted) == 16
    interim = write_interim(tmp_path / "interim", samples)
    run(LabelParams(review=ReviewParams(size=len(planted))), interim, tmp_path / "out")
    queue = [r["sample_id"] for r in _csv_rows(tmp_path / "out/review_queue.csv")]
    assert len(set(queue) & planted) >= 14  # the queue is (nearly) exactly the planted defects


ZS_LABELS = ["bus", "cat", "dog"]


def _embed_one_hot(texts: list[str]) -> np.ndarray:
    """A toy aligned text encoder: the prompt of label i points along axis i."""
    return np.array([[1.0 if f" {label}" in t else 0.0 for label in ZS_LABELS] for t in texts])


def test_zero_shot_with_an_aligned_encoder(tmp_path):
    samples = [
        S("1", ("a photo",), feature_row=0), S("2", ("a photo",), feature_row=1),
        S("3", ("a photo",), feature_row=2), S("4", ("a photo",)),  # no embedding
        S("5", ("a photo",), ("bus",), feature_row=3),
    ]  # fmt: skip
    image = np.array([[0.9, 0.1, 0.0], [0.0, 0.6, 0.8], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0]])
    meta = {
        "embeddings": True,
        "aligned": True,
        "rows": 4,
        "image": {"encoder": "toy", "dim": 3},
        "text": {"encoder": "toy", "dim": 3},
    }
    interim = write_interim(tmp_path / "interim", samples, meta=meta, image=image)
    zs_params = ZeroShotParams(temperature=0.05, threshold=0.6, top_k=2)
    params = LabelParams(vocabulary=tuple(ZS_LABELS), from_sources=False, zeroshot=zs_params)
    m = run(params, interim, tmp_path / "out", prompt_embedder=_embed_one_hot)
    got = _labels(tmp_path / "out")
    assert got[samples[0].sid] == {"bus"}
    assert got[samples[1].sid] == {"dog"}  # sim 0.8 vs 0.6: softmax 0.98
    assert samples[2].sid not in got  # a three-way tie is not confident
    assert got[samples[4].sid] == {"bus"}  # provided wins over zero-shot (dog)
    zs = m["methods"]["zeroshot"]
    assert zs["run"]
    assert zs["samples"] == 4
    assert zs["no_embedding"] == 1
    assert zs["candidates"] == 8
    ev = [r for r in _read(tmp_path / "out", "evidence.parquet").to_pylist()
          if r["sample_id"] == samples[1].sid]  # fmt: skip
    detail = {r["label"]: json.loads(r["detail"]) for r in ev}
    # ("a photo." embeds to nothing in the toy encoder: its background similarity is 0)
    assert detail == {"dog": {"similarity": 0.8, "rank": 1, "background": 0.0},
                      "cat": {"similarity": 0.6, "rank": 2, "background": 0.0}}  # fmt: skip
    assert m["agreement"]["provided~zeroshot"]["samples"] == 1
    tie = next(r for r in _read(tmp_path / "out", "sample_labels.parquet").to_pylist()
           if r["sample_id"] == samples[2].sid)  # fmt: skip
    assert tie["decided_by"] == "none"
    assert tie["review_reason"] == "no_label"


def test_zero_shot_abstains_for_an_image_nearer_the_content_free_prompt(tmp_path):
    """An off-topic image (nearest to "a photo." itself) gets no zero-shot label - not the least
    bad one; with ``background: []`` it takes that label."""

    def embed(texts: list[str]) -> np.ndarray:  # axes: bus, cat, dog, "no content"
        rows = _embed_one_hot(texts).tolist()
        return np.array([[*r, 0.0 if any(r) else 1.0] for r in rows])

    samples = [S("1", ("a photo",), feature_row=0), S("2", ("a photo",), feature_row=1)]
    image = np.array([[0.95, 0.05, 0.0, 0.1], [0.3, 0.0, 0.0, 0.9]])
    toy = {"encoder": "toy", "dim": 4}
    meta = {"embeddings": True, "aligned": True, "rows": 2, "image": toy, "text": toy}
    interim = write_interim(tmp_path / "interim", samples, meta=meta, image=image)
    for background, want in ((("a photo.",), None), ((), {"bus"})):
        zs_params = ZeroShotParams(temperature=0.05, threshold=0.6, background=background)
        params = LabelParams(vocabulary=tuple(ZS_LABELS), from_sources=False, zeroshot=zs_params)
        out = tmp_path / f"out{len(background)}"
        m = run(params, interim, out, prompt_embedder=embed)
        got = _labels(out)
        assert got[samples[0].sid] == {"bus"}
        assert got.get(samples[1].sid) == want
        assert m["methods"]["zeroshot"]["abstained"] == (1 if background else 0)
    with pytest.raises(ValueError, match="content-free"):
        ZeroShotParams(background=("a photo of a {label}.",))


def test_zero_shot_not_run_without_an_aligned_encoder(tmp_path):
    meta = {"embeddings": True, "rows": 1, "image": {"encoder": "efficientnet-lite0", "dim": 3},
            "text": {"encoder": "sentence-transformers/all-MiniLM-L6-v2", "dim": 3}}  # fmt: skip
    interim = write_interim(tmp_path / "interim", [S("1", ("a dog",), feature_row=0)], meta=meta,
                            image=np.ones((1, 3)))  # fmt: skip

    def never(texts: list[str]) -> np.ndarray:
        raise AssertionError("zero-shot must not run")

    params = LabelParams(vocabulary=("dog",))
    m = run(params, interim, tmp_path / "out", prompt_embedder=never)
    zs = m["methods"]["zeroshot"]
    assert zs["run"] is False
    assert "not an aligned dual encoder" in zs["reason"]
    assert _labels(tmp_path / "out") == {S("1", ()).sid: {"dog"}}


def test_zero_shot_prompts_through_cmrops_encoders(tmp_path):
    from cmrops.encoders import load_text_encoder
    from tests.tiny_models import tiny_clip

    model = str(tiny_clip(tmp_path / "clip"))
    vocab = ["bus", "cat", "dog"]
    prompts = load_text_encoder(model, "cpu").encode(
        [f"a photo of a {label}." for label in vocab], progress=False
    )
    samples = [S(str(i), ("a photo",), feature_row=i) for i in range(3)]
    meta = {"embeddings": True, "rows": 3, "image": {"encoder": model, "dim": prompts.shape[1]},
            "text": {"encoder": model, "dim": prompts.shape[1]}}  # fmt: skip
    interim = write_interim(tmp_path / "interim", samples, meta=meta, image=prompts)
    params = LabelParams(vocabulary=tuple(vocab), zeroshot=ZeroShotParams(
        prompts=("a photo of a {label}.",), temperature=0.001, threshold=0.5))  # fmt: skip
    m = run(params, interim, tmp_path / "out")
    assert m["methods"]["zeroshot"]["run"] is True
    assert m["methods"]["zeroshot"]["text_encoder"] == model
    got = _labels(tmp_path / "out")
    assert [got.get(s.sid) for s in samples] == [{"bus"}, {"cat"}, {"dog"}]


def test_coco_categories_flow_through_and_keywords_agree(coco_mini, tmp_path):
    lines = (coco_mini / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    samples = [S(p["image"], tuple(p["captions"]), tuple(p["labels"]), "coco") for p in pairs]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams(synonym_presets=("coco",))
    m = run(params, interim, tmp_path / "out")
    got = _labels(tmp_path / "out")
    assert got == {s.sid: set(s.labels) for s in samples}  # COCO categories are the labels
    assert m["vocabulary"]["size"] == 80
    assert m["unlabelled"] == 0
    assert m["per_method"] == {"provided": sum(len(s.labels) for s in samples)}
    agree = m["agreement"]["provided~keyword"]
    assert agree["samples"] == len(samples) == 159
    # captions name few of the annotated objects, but what they name is mostly annotated
    assert agree["precision"] >= 0.85, agree["precision"]
    assert agree["recall"] >= 0.35, agree["recall"]
    assert agree["mean_kappa"] >= 0.5, agree["mean_kappa"]
    assert agree["kappa_per_label"]["dog"] >= 0.7
    assert m["review"]["queue"] == 100
    assert m["review"]["by_reason"] == {"disagree": 100}


def test_vocabulary_induced_from_unlabelled_coco_captions(coco_mini, tmp_path):
    lines = (coco_mini / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()]
    # Flickr8k-style: captions only, the COCO categories withheld
    samples = [S(p["image"], tuple(p["captions"])) for p in pairs]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams()  # the defaults: 50 terms, max_df auto, phrases
    m = run(params, interim, tmp_path / "out")
    vocab = json.loads((tmp_path / "out" / "vocabulary.json").read_text())
    assert vocab["induced"] is True
    how = vocab["induce"]
    assert how["samples"] == len(samples) == 159
    assert how["agreement"] == params.keyword.threshold
    labels = vocab["labels"]
    assert len(labels) == m["vocabulary"]["size"] == 50
    # content words (or two-word phrases of them), no stop word, singular where the captions
    # have the singular
    for term in labels:
        assert all(w.isalpha() and len(w) >= 3 and w not in STOP_WORDS for w in term.split())
        assert 1 <= len(term.split()) <= 2
    assert not [w for w in labels if w.endswith("s") and w[:-1] in labels]
    # frequency order and bounds, as stated: label frequency first, then document frequency
    df, lf = how["document_frequency"], how["label_frequency"]
    assert set(df) == set(lf) == set(labels)
    assert all(0.01 <= df[w] <= how["max_df_used"] for w in labels)
    assert all(0 < lf[w] <= df[w] for w in labels)
    ranked = [(-lf[w], -df[w], w) for w in how["by_frequency"]]
    assert ranked == sorted(ranked)
    assert sorted(how["by_frequency"]) == labels
    # the commonest subjects stay (the adaptive cap is the commonest subject's frequency) and
    # filler said in passing does not make the list
    assert {"man", "dog", "person", "table"} <= set(labels)
    assert not {"background", "shirt", "day", "air"} & set(labels)
    # what people would search with: 21 of the 50 are COCO category names of these photos
    # (the document-frequency ranking with max_df 0.25 found 10); a phrase among them
    cats = {c for p in pairs for c in p["labels"]}
    assert len(set(labels) & cats) >= 20, sorted(set(labels) & cats)
    assert "parking meter" in labels
    # the keyword method labels with them: most samples get a label, only induced ones
    got = _labels(tmp_path / "out")
    assert len(got) >= 0.8 * len(samples)
    assert set().union(*got.values()) <= set(labels)
    assert m["per_method"].get("keyword", 0) > 0
    # deterministic: the same bytes again
    run(params, interim, tmp_path / "again")
    for name in ("vocabulary.json", "labels.parquet"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_induced_vocabulary_keeps_a_subject_of_most_samples():
    """A set where one subject is in most photos (``dog``: 80 % of the samples, as in a pet
    collection): a fixed max_df of 0.25 drops it; the adaptive cap keeps it, and drops a word
    more widespread than any subject that captions only say in passing."""
    from cmrops.labels.induce import induce_vocabulary

    caps = []
    for i in range(100):
        subject = "dog" if i < 80 else "cat"
        extra = ["grass", "sofa", "beach", "snow"][i % 4]
        caps.append([
            f"a {subject} on the {extra}",
            f"the {subject} rests on some {extra} today",
            f"{subject} with a ball" if i % 2 else f"a {subject} under a tree",
            f"photo taken {'today' if i < 95 else 'yesterday'} of a {subject}",
        ])  # fmt: skip
    labels, how = induce_vocabulary(caps, InduceParams(size=10))
    assert labels[0] == "dog"
    assert "cat" in labels
    assert how["max_df_used"] == 0.8  # the commonest subject's document frequency
    assert "today" not in labels  # in 95 % of the samples, but in one or two captions of each
    fixed, _ = induce_vocabulary(caps, InduceParams(size=10, max_df=0.25))
    assert "dog" not in fixed
    # one caption per sample: the label frequency is the document frequency
    single, how1 = induce_vocabulary([c[:1] for c in caps], InduceParams(size=10))
    assert how1["label_frequency"] == how1["document_frequency"]
    assert single[0] == "dog"


def test_cli_label_command(tmp_path, capsys):
    interim = write_interim(tmp_path / "interim", SHAPES)
    (tmp_path / "m.csv").write_text("key,label\na.png,star\n")
    params = tmp_path / "params.yaml"
    params.write_text(
        "label:\n  synonyms: {grey: [gray]}\n  manual: [m.csv]\n  review: {size: 2}\n"
    )
    args = ["label", "--params", str(params), "--interim", str(interim),
            "--align", str(tmp_path / "no-align"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("label: 7 samples, 6 labelled, 1 without a label")
    assert "zeroshot not run" in text
    assert len((tmp_path / "out" / "review_queue.csv").read_text().splitlines()) == 3
    params.write_text("label:\n  vocabulary: [dog]\n  treshold: 0.5\n")
    assert cli.main(args) == 2
    assert "unknown key(s) treshold" in capsys.readouterr().err


def test_missing_or_malformed_interim_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `cmrops preprocess` first"):
        run(PARAMS, tmp_path / "nothing", tmp_path / "out")
    (tmp_path / "bad").mkdir()
    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "bad" / "samples.parquet")
    with pytest.raises(ValueError, match="missing column"):
        run(PARAMS, tmp_path / "bad", tmp_path / "out")


def test_params_validation():
    with pytest.raises(ValueError, match="threshold"):
        KeywordParams(threshold=1.5)
    with pytest.raises(ValueError, match=r"'\{label\}'"):
        ZeroShotParams(prompts=("a photo",))
    with pytest.raises(ValueError, match="twice"):
        LabelParams(auto_methods=("keyword", "keyword"))
