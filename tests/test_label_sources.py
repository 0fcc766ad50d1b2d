"""The label sources one by one: vocabulary, keywords, file readers, zero-shot maths,
resolution, agreement and review priority."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmrops.labels import (
    Candidate,
    EmptyVocabularyError,
    KeyIndex,
    KeywordMatcher,
    LabelFileError,
    Statement,
    UnknownSampleKeyError,
    Vocabulary,
    agreement,
    read_statements,
    resolve,
    review,
    zeroshot,
)
from cmrops.labels.presets import COCO

# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_sorted_distinct_with_synonyms_and_canonical_lookup():
    vocab, unused = Vocabulary.build(
        ["dog", " cat ", "dog", "hot  dog"], {"dog": ["Puppy", "pup"], "zebra": ["stripes"]}
    )
    assert vocab.labels == ("cat", "dog", "hot dog")
    assert vocab.terms["dog"] == ("dog", "puppy", "pup")
    assert unused == ["zebra"]
    assert vocab.canonical("dog") == "dog"
    assert vocab.canonical("  DOG ") == "dog"
    assert vocab.canonical("puppy") == "dog"
    assert vocab.canonical("Hot Dog") == "hot dog"
    assert vocab.canonical("zebra") is None


def test_empty_vocabulary_is_a_clear_error():
    with pytest.raises(EmptyVocabularyError, match="vocabulary is empty"):
        Vocabulary.build(["", "  "])


def test_reserved_label_text_rejected():
    with pytest.raises(ValueError, match="may not contain"):
        Vocabulary.build(["a|b"])


# --------------------------------------------------------------------------- keywords


def test_keywords_whole_words_plurals_synonyms_longest_first():
    vocab, _ = Vocabulary.build(
        ["dog", "hot dog", "cat", "bus", "person"], {"dog": ["puppy"], "person": ["people"]}
    )
    m = KeywordMatcher(vocab)
    assert m.labels_in("A Dog on a mat.") == {"dog"}
    assert m.labels_in("two dogs and a puppy") == {"dog"}
    assert m.labels_in("the category of concatenation") == set()  # no substrings
    assert m.labels_in("a hot dog stand") == {"hot dog"}  # not also "dog"
    assert m.labels_in("hot dogs and a dog") == {"hot dog", "dog"}
    assert m.labels_in("A HOT-DOG, (cat)!") == {"hot dog", "cat"}
    assert m.labels_in("two buses, people waiting") == {"bus", "person"}
    assert KeywordMatcher(vocab, plurals=False).labels_in("two dogs") == set()
    assert m.score(["a dog", "a cat", "dogs and cats", "nothing"]) == {"dog": 2, "cat": 2}


def test_coco_preset_covers_the_coco_categories():
    assert len(COCO) == 80
    vocab, unused = Vocabulary.build(COCO.keys(), COCO)
    assert unused == []
    m = KeywordMatcher(vocab)
    assert m.labels_in("A man riding a motorbike next to a fire hydrant") == {
        "person", "motorcycle", "fire hydrant"
    }  # fmt: skip
    assert m.labels_in("a teddy bear on a bed") == {"teddy bear", "bed"}


# --------------------------------------------------------------------------- file readers


def test_csv_reader_columns_multi_labels_no_label_and_blank(tmp_path):
    f = tmp_path / "m.csv"
    f.write_text("\ufeffkey,label\nimg/a.jpg,dog\nimg/b.jpg, dog | cat \nimg/c.jpg,-\nimg/d.jpg,\n")
    st = read_statements(f, name="m.csv")
    assert [(s.key, s.labels) for s in st] == [
        ("img/a.jpg", ("dog",)), ("img/b.jpg", ("dog", "cat")), ("img/c.jpg", ()),
    ]  # fmt: skip
    assert st[1].where == "m.csv:3"


def test_csv_reader_review_queue_answer_column_wins_and_missing_columns(tmp_path):
    f = tmp_path / "q.csv"
    f.write_text("rank,sample_id,auto_labels,answer\n1,abc,dog,cat\n2,def,dog,\n")
    assert [(s.key, s.labels) for s in read_statements(f)] == [("abc", ("cat",))]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,label\nx,dog\n")
    with pytest.raises(LabelFileError, match=r"bad.csv: no sample key column"):
        read_statements(bad, name="bad.csv")


def test_jsonl_reader(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(
        '{"sample_id": "s1", "labels": ["dog", "cat"]}\n\n{"key": "k2", "label": "dog|cat"}\n'
        '{"key": "k3", "labels": []}\n{"key": "k4", "label": null}\n'
        '{"key": "k5", "source": "coco", "label": "dog"}\n'
    )
    st = read_statements(f)
    assert [(s.key, s.source, s.labels) for s in st] == [
        ("s1", None, ("dog", "cat")), ("k2", None, ("dog", "cat")), ("k3", None, ()),
        ("k5", "coco", ("dog",)),
    ]  # fmt: skip
    f.write_text('{"key": "k1", "label": "dog"}\nnot json\n')
    with pytest.raises(LabelFileError, match=r"m.jsonl:2: not valid JSON"):
        read_statements(f, name="m.jsonl")


def _ls_task(key: str, *annotations: dict, field: str = "sample_id") -> dict:
    return {"id": hash(key) % 1000, "data": {field: key, "image": f"/img/{key}.jpg"},
            "annotations": list(annotations), "predictions": []}  # fmt: skip


def _ann(choices=None, taxonomy=None, **kw) -> dict:
    value = {"choices": choices} if choices is not None else {"taxonomy": taxonomy}
    result = [] if choices == [] else [
        {"from_name": "label", "to_name": "image", "type": "choices" if taxonomy is None
         else "taxonomy", "value": value}
    ]  # fmt: skip
    return {"id": kw.pop("id", 1), "result": result, **kw}


def test_label_studio_export_choices_taxonomy_annotation_choice(tmp_path):
    tasks = [
        _ls_task("s1", _ann(["dog", "cat"])),
        _ls_task("s2", _ann(taxonomy=[["Animal", "dog"], ["Vehicle", "bus"]])),
        _ls_task("s3", _ann(["dog"], id=1, updated_at="2024-01-01T00:00:00Z"),
                 _ann(["cat"], id=2, updated_at="2024-02-01T00:00:00Z")),
        _ls_task("s4", _ann(["dog"], id=5, was_cancelled=True)),  # only cancelled: nothing
        _ls_task("s5"),  # predictions only: nothing
        _ls_task("s6", _ann([])),  # answered with nothing selected: no label
        _ls_task("s7", _ann(["cat"], id=9, updated_at="2025"), _ann(["dog"], id=1,
                 ground_truth=True)),
        _ls_task("img/8.jpg", _ann(["dog"]), field="source_key"),
    ]  # fmt: skip
    f = tmp_path / "export.json"
    f.write_text(json.dumps(tasks))
    st = {s.key: s.labels for s in read_statements(f)}
    assert st == {
        "s1": ("dog", "cat"), "s2": ("dog", "bus"), "s3": ("cat",), "s6": (), "s7": ("dog",),
        "img/8.jpg": ("dog",),
    }  # fmt: skip


def test_label_studio_bad_export(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('[{"annotations": []}]')
    with pytest.raises(LabelFileError, match="needs a 'data' object"):
        read_statements(f)
    f.write_text('[{"data": {"image": "a.jpg"}, "annotations": []}]')
    with pytest.raises(LabelFileError, match="no sample key"):
        read_statements(f)
    txt = tmp_path / "x.txt"
    txt.write_text("key,label\n")
    with pytest.raises(LabelFileError, match="cannot tell the format"):
        read_statements(txt)
    with pytest.raises(FileNotFoundError, match="label file not found"):
        read_statements(tmp_path / "missing.csv")


def test_key_index_sample_id_source_key_ambiguity_quarantine():
    index = KeyIndex(
        [("id1", "a", "x.jpg"), ("id2", "a", "y.jpg"), ("id3", "b", "y.jpg")],
        quarantined=[("gone", "a", "z.jpg")],
    )
    assert index.resolve("id1") == ("id1", "ok")
    assert index.resolve("x.jpg") == ("id1", "ok")
    assert index.resolve("y.jpg", "b") == ("id3", "ok")
    assert index.resolve("y.jpg")[1].startswith("ambiguous")
    assert index.resolve("z.jpg") == (None, "quarantined")
    assert index.resolve("gone") == (None, "quarantined")
    st = [Statement(k, None, ("dog",), f"f.csv:{i}") for i, k in enumerate(
        ["x.jpg", "z.jpg", "nope1", "nope2", "y.jpg"])]  # fmt: skip
    with pytest.raises(UnknownSampleKeyError) as e:
        index.resolve_all(st, "f.csv")
    msg = str(e.value)
    assert msg.startswith("f.csv: 3 sample key(s) not in the input")
    assert "'nope1' (unknown)" in msg
    assert "'nope2'" in msg
    assert "'y.jpg' (ambiguous" in msg
    resolved, skipped = index.resolve_all(st[:2], "f.csv")
    assert [sid for sid, _ in resolved] == ["id1"]
    assert skipped == 1


# --------------------------------------------------------------------------- zero-shot


def test_alignment_from_meta():
    assert not zeroshot.alignment(None)[0]
    assert not zeroshot.alignment({"embeddings": False})[0]
    default = {"embeddings": True, "image": {"encoder": "efficientnet-lite0"},
               "text": {"encoder": "sentence-transformers/all-MiniLM-L6-v2"}}  # fmt: skip
    ok, why = zeroshot.alignment(default)
    assert not ok
    assert "not an aligned" in why
    clip = {"embeddings": True, "image": {"encoder": "m/clip"}, "text": {"encoder": "m/clip"}}
    assert zeroshot.alignment(clip)[0]
    assert zeroshot.alignment({**default, "aligned": True})[0]
    assert not zeroshot.alignment({**clip, "aligned": False})[0]


def test_zero_shot_scores_softmax_and_prompt_averaging():
    labels = ["cat", "dog"]
    seen: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.array([[1.0, 0.0] if "cat" in t else [0.0, 1.0] for t in texts])

    emb = zeroshot.label_embeddings(labels, ["a {label}", "the {label}"], embed)
    assert seen == [["a cat", "the cat", "a dog", "the dog"]]
    np.testing.assert_allclose(emb, np.eye(2))
    sims, probs = zeroshot.scores(np.array([[2.0, 0.0], [0.6, 0.8]]), emb, temperature=0.1)
    np.testing.assert_allclose(sims, [[1.0, 0.0], [0.6, 0.8]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert probs[0, 0] > 0.99
    assert probs[1, 1] > probs[1, 0]
    with pytest.raises(ValueError, match="differ in dimension"):
        zeroshot.scores(np.zeros((1, 3)), emb, 0.1)


# --------------------------------------------------------------------------- resolution


def _c(label, source="auto", method="provided", conf=1.0, passed=True, sid="s"):
    return Candidate(sid, label, source, method, conf, passed)


def test_resolution_precedence_per_sample():
    order = ("provided", "keyword", "zeroshot")
    auto = [_c("dog"), _c("cat", method="keyword", conf=0.6), _c("bus", method="keyword",
            conf=0.2, passed=False)]  # fmt: skip
    d = resolve("s", auto, {}, order, "fallback")
    assert d.decided_by == "auto"
    assert d.labels == ["dog"]
    d = resolve("s", auto, {}, order, "union")
    assert d.labels == ["cat", "dog"]
    d = resolve("s", [*auto, _c("bus", "manual", "manual")], {}, order, "fallback")
    assert d.decided_by == "manual"
    assert d.labels == ["bus"]
    d = resolve("s", [*auto, _c("bus", "manual", "manual"), _c("cat", "reviewed", "review")], {},
                order, "fallback")  # fmt: skip
    assert d.decided_by == "reviewed"
    assert d.labels == ["cat"]
    d = resolve("s", [*auto, _c("bus", "manual", "manual")], {"reviewed": {"s"}}, order, "fallback")
    assert d.decided_by == "reviewed"
    assert d.labels == []
    d = resolve("s", [_c("bus", method="keyword", conf=0.2, passed=False)], {}, order, "fallback")
    assert d.decided_by == "none"
    assert d.labels == []
    # keyword fills in when the source provides nothing; union keeps the best confidence
    d = resolve("s", [_c("cat", method="keyword", conf=0.6)], {}, order, "fallback")
    assert d.labels == ["cat"]
    assert d.selected["cat"].method == "keyword"
    both = [_c("cat", method="zeroshot", conf=0.9), _c("cat", method="keyword", conf=0.6)]
    d = resolve("s", both, {}, order, "union")
    assert d.selected["cat"].method == "zeroshot"


def test_agreement_jaccard_precision_recall_kappa():
    kept = {
        "provided": {"a": frozenset({"dog"}), "b": frozenset({"cat"}), "c": frozenset({"dog"})},
        "keyword": {"a": frozenset({"dog"}), "b": frozenset({"dog"}), "c": frozenset()},
    }
    applicable = {"provided": {"a", "b", "c"}, "keyword": {"a", "b", "c"}}
    out = agreement(kept, applicable, ["cat", "dog"])["provided~keyword"]
    assert out["samples"] == 3
    assert out["mean_jaccard"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["precision"] == 0.5
    assert out["recall"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["kappa_per_label"]["dog"] == pytest.approx(-0.5)  # 1 of 3 agree on "dog"
    assert str(out["kappa_per_label"]["cat"]) == "0.0"  # keyword never says cat: chance level
    assert out["mean_kappa"] == -0.25
    same = agreement({"x": kept["provided"], "y": kept["provided"]},
                     {"x": {"a", "b", "c"}, "y": {"a", "b", "c"}}, ["cat", "dog"])  # fmt: skip
    assert same["x~y"]["mean_kappa"] == 1.0
    assert same["x~y"]["exact_match"] == 1.0


# --------------------------------------------------------------------------- review


def test_review_priority_reasons_and_order():
    swap = review.priority("s1", {"provided": frozenset({"red", "circle"}),
                                  "keyword": frozenset({"blue", "square"})}, [], 2)  # fmt: skip
    assert swap is not None
    assert swap.reason == "disagree"
    assert swap.priority == 1.0
    omission = review.priority("s2", {"provided": frozenset({"dog", "cat"}),
                                      "keyword": frozenset({"dog"})}, [], 2)  # fmt: skip
    extra = review.priority("s3", {"provided": frozenset({"dog"}),
                                   "keyword": frozenset({"dog", "cat"})}, [], 1)  # fmt: skip
    assert omission is not None
    assert extra is not None
    assert extra.priority > omission.priority  # a contradiction outranks an omission
    none = review.priority("s4", {"keyword": frozenset()}, [("dog", "keyword", 0.2, 0.4)], 0)
    assert none is not None
    assert none.reason == "no_label"
    assert none.priority == 1.0
    near = review.priority("s5", {"keyword": frozenset({"dog"})}, [("dog", "keyword", 0.4, 0.4)], 1)
    assert near is not None
    assert near.reason == "uncertain"
    assert near.priority == 1.0
    sure = review.priority("s6", {"keyword": frozenset({"dog"})}, [("dog", "keyword", 1.0, 0.5)], 1)
    assert sure is None
    queue = review.select([near, omission, swap, none, extra], 3)
    assert [q.sample_id for q in queue] == ["s1", "s4", "s5"]


def test_label_studio_config_lists_vocabulary():
    xml = review.label_studio_config(["dog", 'say "hi"'])
    assert '<Choice value="dog"/>' in xml
    assert "<Choice value='say \"hi\"'/>" in xml
    assert 'toName="image"' in xml
    assert 'choice="multiple"' in xml
