"""The project's review answer log (cmrops.answers): concurrent writers lose nothing, torn and
malformed lines, the incremental index, merged vs pending; and how the label and clean stages
merge it (latest answer wins, reviewed > manual > auto, an overruled quarantine returns the
sample)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cmrops import answers
from cmrops.schema import CLEAN_OVERRIDES
from cmrops.stages import clean, label
from tests.clean_helpers import interim, row, sid
from tests.test_label_stage import PARAMS, SHAPES, S, write_interim


def _labels_of(out: Path) -> dict[str, set[str]]:
    got: dict[str, set[str]] = {}
    for r in pq.read_table(out / "labels.parquet").to_pylist():
        got.setdefault(r["sample_id"], set()).add(r["label"])
    return got


# --------------------------------------------------------------------------- the log


def test_records_round_trip_and_bad_answers_are_refused(tmp_path: Path) -> None:
    log = tmp_path / "review" / "answers.jsonl"
    a = answers.label_answer("s1", ["dog", " cat", "dog"], "edit", "  Ann  Lee ", note="hm")
    v = answers.quarantine_verdict("s2", "clean", "mismatch", "overrule", "caption fits", "bo")
    size = answers.append(log, [a, v])
    assert size == log.stat().st_size
    snap = answers.read(log)
    assert [r.data for r in snap.records] == [a, v]
    assert a["labels"] == ["cat", "dog"]
    assert a["who"] == "Ann Lee"
    assert [(r.line, r.start) for r in snap.records] == [(1, 0), (2, snap.records[0].end)]
    assert snap.bytes == size
    assert snap.torn_bytes == 0
    assert answers.latest(snap.records, "labels")["s1"].labels == ("cat", "dog")
    assert answers.latest(snap.records, "quarantine", "clean")["s2"].data["verdict"] == "overrule"
    with pytest.raises(answers.AnswerLogError, match="takes no labels"):
        answers.label_answer("s1", ["dog"], "reject", "ann")
    with pytest.raises(answers.AnswerLogError, match="needs a reason"):
        answers.quarantine_verdict("s1", "clean", "mismatch", "overrule", "  ", "ann")
    with pytest.raises(answers.AnswerLogError, match="name the reviewer"):
        answers.label_answer("s1", [], "reject", " ")
    with pytest.raises(answers.AnswerLogError, match="action must be"):
        answers.label_answer("s1", [], "maybe", "ann")
    assert answers.read(tmp_path / "absent.jsonl").records == []


def _write_many(path: str, who: str, n: int) -> None:
    for i in range(n):
        answers.append(path, [answers.label_answer(f"{who}-{i}", [f"l{i % 3}"], "edit", who)])


def test_two_writers_in_threads_and_processes_lose_nothing(tmp_path: Path) -> None:
    log = tmp_path / "answers.jsonl"
    n = 150
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(log), f"p{k}", n)) for k in range(2)]
    threads = [threading.Thread(target=_write_many, args=(str(log), f"t{k}", n)) for k in range(2)]
    for w in (*procs, *threads):
        w.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    snap = answers.read(log)
    assert snap.torn_bytes == 0
    got = sorted(r.sample_id for r in snap.records)
    assert got == sorted(f"{w}-{i}" for w in ("p0", "p1", "t0", "t1") for i in range(n))
    assert len({r.data["id"] for r in snap.records}) == 4 * n
    assert log.read_bytes().count(b"\n") == 4 * n  # whole lines, none interleaved


def test_a_torn_tail_is_ignored_then_cut_and_a_bad_line_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "answers.jsonl"
    answers.append(log, [answers.label_answer("s1", ["a"], "edit", "ann")])
    whole = log.read_bytes()
    with log.open("ab") as fh:  # a writer killed half-way through its line
        fh.write(b'{"v": 1, "kind": "lab')
    snap = answers.read(log)
    assert [r.sample_id for r in snap.records] == ["s1"]
    assert snap.torn_bytes == len(b'{"v": 1, "kind": "lab')
    assert snap.bytes == len(whole)
    answers.append(log, [answers.label_answer("s2", [], "reject", "bo")])
    assert [r.sample_id for r in answers.read(log).records] == ["s1", "s2"]
    assert log.read_bytes().startswith(whole + b'{"action": "reject"')

    with log.open("ab") as fh:
        fh.write(b'{"v": 1, "kind": "labels"}\n')
    with pytest.raises(answers.AnswerLogError, match=r"answers\.jsonl:3: field 'id'"):
        answers.read(log)
    log.write_text("not json\n")
    with pytest.raises(answers.AnswerLogError, match=r":1: not valid JSON"):
        answers.read(log)


def test_the_index_reads_only_what_was_appended_and_reloads_a_replaced_log(tmp_path: Path) -> None:
    log = tmp_path / "answers.jsonl"
    index = answers.AnswerIndex(log).refresh()
    assert index.records == []
    assert index.bytes == 0
    answers.append(log, [answers.label_answer("s1", ["a"], "edit", "ann")])
    answers.append(
        log,
        [
            answers.label_answer("s1", ["b"], "edit", "bo"),
            answers.quarantine_verdict("s9", "clean", "x", "confirm", "", "bo"),
        ],
    )
    index.refresh()
    assert [r.line for r in index.records] == [1, 2, 3]
    assert index.labels["s1"].labels == ("b",)  # the latest answer wins
    assert index.verdicts["s9"].data["verdict"] == "confirm"
    before = index.bytes
    answers.append(log, [answers.label_answer("s2", [], "reject", "cy")])
    index.refresh()
    assert index.records[-1].start == before
    assert index.records[-1].line == 4
    assert [r.data for r in index.records] == [r.data for r in answers.read(log).records]
    replacement = tmp_path / "other.jsonl"
    answers.append(replacement, [answers.label_answer("s7", ["c"], "edit", "di")])
    replacement.replace(log)  # a new file at the same path
    index.refresh()
    assert [r.sample_id for r in index.records] == ["s7"]
    log.unlink()
    assert index.refresh().records == []


def test_merge_state_tells_merged_from_pending_and_notices_edits(tmp_path: Path) -> None:
    log = tmp_path / "answers.jsonl"
    merged = tmp_path / "review_log.json"
    answers.append(log, [answers.label_answer("s1", ["a"], "edit", "ann")])
    assert not answers.merge_state("label", merged, log).ran
    merged.write_text(json.dumps(answers.merged_record(answers.read(log), str(log))))
    answers.append(log, [answers.label_answer("s2", ["a"], "edit", "ann")])
    state = answers.merge_state("label", merged, log)
    r1, r2 = answers.read(log).records
    assert state.ran
    assert state.consistent
    assert state.merged(r1)
    assert not state.merged(r2)
    log.write_text(log.read_text().replace('"a"', '"b"'))  # someone edited the log by hand
    state = answers.merge_state("label", merged, log)
    assert not state.consistent
    assert "changed" in state.detail
    assert not state.merged(answers.read(log).records[0])


# --------------------------------------------------------------------------- the label stage


def test_label_merges_the_latest_answer_per_sample_reviewed_over_manual(tmp_path: Path) -> None:
    by_key = {s.key: s for s in SHAPES}
    gone = S("gone.png", ("lost",))
    inter = write_interim(tmp_path / "interim", SHAPES, quarantined=(gone,))
    out = tmp_path / "out"
    log = tmp_path / "review" / "answers.jsonl"
    first = label.run(PARAMS, inter, out, review_log=log)  # no log yet: nothing merged
    assert json.loads((out / "review_log.json").read_text())["bytes"] == 0
    assert first["review"]["log"] is None
    d, e, a = by_key["d.png"].sid, by_key["e.png"].sid, by_key["a.png"].sid
    answers.append(
        log,
        [
            answers.label_answer(d, ["circle"], "edit", "ann"),
            answers.label_answer(e, [], "reject", "ann"),
            answers.label_answer(a, ["red", "circle"], "accept", "bo"),
            answers.label_answer(gone.sid, ["red"], "edit", "bo"),  # quarantined upstream since
            answers.label_answer("0123456789abcdef", ["red"], "edit", "bo"),  # not a sample
        ],
    )
    answers.append(log, [answers.label_answer(d, ["triangle", "yellow"], "edit", "cy")])
    (tmp_path / "manual.csv").write_text(f"key,label\n{d},star\n{by_key['g.png'].sid},star\n")
    params = dataclasses.replace(PARAMS, manual=("manual.csv",))
    m = label.run(params, inter, out, base_dir=tmp_path, review_log=log)
    got = _labels_of(out)
    assert got[d] == {"triangle", "yellow"}  # the latest answer, over the manual file
    assert e not in got  # "no label applies"
    assert got[a] == {"circle", "red"}
    assert got[by_key["g.png"].sid] == {"star"}  # manual, nobody reviewed it
    rows = [r for r in pq.read_table(out / "labels.parquet").to_pylist() if r["sample_id"] == d]
    assert {(r["source"], r["method"]) for r in rows} == {("reviewed", "review")}
    ev = pq.read_table(out / "evidence.parquet").to_pylist()
    tri = next(
        r for r in ev if (r["sample_id"], r["label"], r["source"]) == (d, "triangle", "reviewed")
    )
    detail = json.loads(tri["detail"])
    assert detail["who"] == "cy"
    assert detail["action"] == "edit"
    assert detail["at"] == f"{log}:6"
    assert detail["answered_at"].endswith("Z")
    assert m["review"]["log"] == {
        "answers": 6,
        "samples": 3,
        "labels": 4,
        "samples_answered": 5,
        "quarantined_samples": 1,
        "unknown_samples": 1,
        "torn_bytes": 0,
    }
    assert m["decided_by"]["reviewed"] == 3
    merged = json.loads((out / "review_log.json").read_text())
    assert merged["bytes"] == log.stat().st_size
    assert merged["records"] == 6
    assert answers.merge_state("label", out / "review_log.json", log).consistent
    queued = (out / "review_queue.csv").read_text()
    assert d not in queued
    assert e not in queued


def test_the_log_supersedes_the_params_answers_file_for_the_samples_it_answers(
    tmp_path: Path,
) -> None:
    by_key = {s.key: s for s in SHAPES}
    inter = write_interim(tmp_path / "interim", SHAPES)
    d, e = by_key["d.png"].sid, by_key["e.png"].sid
    (tmp_path / "answers.csv").write_text(f"sample_id,answer\n{d},star\n{e},green\n")
    log = tmp_path / "answers.jsonl"
    answers.append(log, [answers.label_answer(d, ["triangle"], "edit", "ann")])
    params = dataclasses.replace(PARAMS, review=label.ReviewParams(answers="answers.csv"))
    m = label.run(params, inter, tmp_path / "out", base_dir=tmp_path, review_log=log)
    got = _labels_of(tmp_path / "out")
    assert got[d] == {"triangle"}
    assert got[e] == {"green"}
    assert m["review"]["answers"]["superseded_by_review_log"] == 1


# --------------------------------------------------------------------------- the clean stage

NO_LABEL_RULES = dataclasses.replace(
    clean.CleanParams(),
    irrelevant=clean.IrrelevantRule(enabled=False),
    label_disagreement=clean.LabelDisagreementRule(enabled=False),
)


def test_clean_returns_an_overruled_sample_and_records_every_verdict(tmp_path: Path) -> None:
    rows = [
        row("tiny", width=30, height=60),  # min_side; overruled -> kept
        row("both", width=30, height=60, captions=["hi"]),  # min_side and caption_length
        row("short", captions=["a cat"]),  # caption_length; confirmed
        row("fine"),
    ]
    inter = interim(tmp_path / "interim", rows)
    log = tmp_path / "answers.jsonl"
    answers.append(
        log,
        [
            answers.quarantine_verdict(sid("tiny"), "clean", "min_side", "overrule", "icon", "ann"),
            answers.quarantine_verdict(sid("both"), "clean", "min_side", "overrule", "ok", "ann"),
            answers.quarantine_verdict(
                sid("short"), "clean", "caption_length", "confirm", "", "bo"
            ),
            answers.quarantine_verdict(
                "0123456789abcdef", "clean", "min_side", "overrule", "x", "bo"
            ),
            answers.label_answer(sid("fine"), ["x"], "edit", "bo"),  # label answers: not clean's
        ],
    )
    out = tmp_path / "clean"
    m = clean.run(NO_LABEL_RULES, inter, None, out, review_log=log)
    kept = pq.read_table(out / "samples.parquet")["sample_id"].to_pylist()
    assert kept == sorted([sid("tiny"), sid("fine")])
    q = {r["sample_id"]: r for r in pq.read_table(out / "quarantine.parquet").to_pylist()}
    assert q[sid("both")]["reason"] == "caption_length"  # the next rule claims it
    assert json.loads(q[sid("both")]["evidence"])["overruled"] == ["min_side"]
    assert m["inputs"] == m["kept"] + m["quarantined"] == 4
    assert m["rules"]["min_side"]["flagged"] == 2  # still measured
    assert m["review"] == {
        "verdicts": 3,
        "confirmed": 1,
        "overruled": 2,
        "kept_by_overrule": 1,
        "overruled_by_reason": {"min_side": 2},
        "not_in_input": 1,
    }
    t = pq.read_table(out / "overrides.parquet")
    assert t.schema.equals(CLEAN_OVERRIDES)
    got = {r["sample_id"]: r for r in t.to_pylist()}
    assert got[sid("tiny")]["outcome"] == "kept"
    assert got[sid("tiny")]["why"] == "icon"
    assert got[sid("both")]["quarantined_by"] == "caption_length"
    assert got[sid("short")]["verdict"] == "confirm"
    assert got[sid("short")]["rule_flags"]
    merged = json.loads((out / "review_log.json").read_text())
    assert merged["bytes"] == log.stat().st_size
    assert merged["verdicts"] == 3

    # a later verdict undoes the overrule; without a log everything is as before
    answers.append(
        log, [answers.quarantine_verdict(sid("tiny"), "clean", "min_side", "confirm", "", "cy")]
    )
    clean.run(NO_LABEL_RULES, inter, None, out, review_log=log)
    assert sid("tiny") not in pq.read_table(out / "samples.parquet")["sample_id"].to_pylist()
    plain = clean.run(NO_LABEL_RULES, inter, None, tmp_path / "plain")
    assert plain["review"]["verdicts"] == 0
    assert pq.read_table(tmp_path / "plain" / "overrides.parquet").num_rows == 0


def test_an_overruled_near_duplicate_is_kept_beside_its_twin(tmp_path: Path) -> None:
    from tests.clean_helpers import flip, rand64

    base = rand64("twin")
    rows = [
        row("big", phash=base, dhash=1, width=200, height=200),
        row("small", phash=flip(base, [2]), dhash=1),
        row("other"),
    ]
    inter = interim(tmp_path / "interim", rows)
    first = clean.run(NO_LABEL_RULES, inter, None, tmp_path / "a")
    assert first["quarantined_by_reason"] == {"near_duplicate_image": 1}
    log = tmp_path / "answers.jsonl"
    answers.append(
        log,
        [
            answers.quarantine_verdict(
                sid("small"), "clean", "near_duplicate_image", "overrule", "another view", "ann"
            )
        ],
    )
    m = clean.run(NO_LABEL_RULES, inter, None, tmp_path / "b", review_log=log)
    assert m["quarantined"] == 0
    assert m["kept"] == 3


def test_the_stage_table_names_the_default_review_log() -> None:
    """dvc.yaml and the DAG pass the stage table's --review-log; the stages default to
    :data:`cmrops.answers.DEFAULT_PATH`: one file."""
    from cmrops import answers, stage_table

    assert stage_table.REVIEW_LOG == answers.DEFAULT_PATH
    for name in ("label", "clean"):
        args = stage_table.STAGES[name].args
        assert args[args.index("--review-log") + 1] == answers.DEFAULT_PATH
