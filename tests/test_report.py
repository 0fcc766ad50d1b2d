"""cmrops.report (what the dashboard shows) against the files of one tiny real run
(``dashboard_project``: collect -> evaluate, planted defects) and against an empty or damaged
project."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmrops import report, runlog


def _json(project: Path, rel: str) -> dict[str, Any]:
    return json.loads((project / rel).read_text())


def test_funnel_follows_the_stage_metrics(dashboard_project: Path) -> None:
    p = dashboard_project
    raw, interim = _json(p, "data/raw/metrics.json"), _json(p, "data/interim/metrics.json")
    quality, split = _json(p, "metrics/quality.json"), _json(p, "metrics/split.json")
    f = report.funnel(p).set_index("stage")
    assert list(f.index) == ["collect", "preprocess", "label", "clean", "split"]
    assert tuple(f.loc["collect"]) == (raw["inputs"], raw["kept"], raw["quarantined"])
    assert tuple(f.loc["preprocess"]) == (interim["in"], interim["kept"], interim["quarantined"])
    assert tuple(f.loc["clean"]) == (quality["inputs"], quality["kept"], quality["quarantined"])
    assert f.loc["split", "kept"] == split["samples"]
    assert (f["in"] == f["kept"] + f["quarantined"]).all()  # inputs = kept + quarantined
    assert list(f["in"])[1:] == list(f["kept"])[:-1]  # each stage reads what the last kept


def test_quarantine_counts_match_every_stage_and_several_reasons_exist(
    dashboard_project: Path,
) -> None:
    p = dashboard_project
    counts = report.quarantine_counts(p)
    for stage, rel in [("collect", "data/raw/metrics.json"),
                       ("preprocess", "data/interim/metrics.json"),
                       ("clean", "metrics/quality.json")]:  # fmt: skip
        mine = counts[counts["stage"] == stage]
        assert (
            dict(zip(mine["reason"], mine["count"], strict=True))
            == _json(p, rel)["quarantined_by_reason"]
        ), stage
    assert counts["reason"].nunique() >= 4
    assert {"near_duplicate_image", "exact_duplicate"} <= set(counts["reason"])


def test_quarantine_examples_carry_images_and_evidence(dashboard_project: Path) -> None:
    q = report.quarantine(dashboard_project)
    dups = q[q["reason"].isin(["near_duplicate_image", "exact_duplicate"])]
    assert len(dups)
    for _, row in dups.iterrows():
        ev = json.loads(row["evidence"])
        assert row["other_id"] == ev["kept"]
        assert row["distance"] == ev["phash_distance"]
        assert row["distance_kind"] == "phash_distance"
        for path in (row["image"], row["other_image"]):
            thumb = report.thumbnail(path, 64)
            assert thumb.data is not None, thumb.error
            assert thumb.width
            assert thumb.height
    exact = dups[dups["reason"] == "exact_duplicate"].iloc[0]
    assert Path(exact["image"]).read_bytes() == Path(exact["other_image"]).read_bytes()
    disagree = q[q["reason"] == "label_disagreement"]
    for _, row in disagree.iterrows():
        assert row["score_kind"] == "overlap"
        assert row["score"] == json.loads(row["evidence"])["overlap"]
    clean = q[q["stage"] == "clean"]
    assert clean["image"].map(lambda s: Path(s).is_file()).all()


def test_a_corrupt_image_gives_its_error_not_an_exception(
    dashboard_project: Path, tmp_path: Path
) -> None:
    q = report.quarantine(dashboard_project)
    truncated = q[q["reason"] == "truncated_image"]
    for path in truncated["image"]:
        t = report.thumbnail(path)
        assert t.data is None
        assert "cannot decode" in (t.error or "")
    bad = tmp_path / "zero"
    bad.write_bytes(b"")
    assert report.thumbnail(bad).error
    assert "missing" in (report.thumbnail(tmp_path / "nope").error or "")
    assert report.thumbnail(None).error


def test_headline_and_latest_run(dashboard_project: Path) -> None:
    p = dashboard_project
    h = report.headline(p)
    quality, retrieval = _json(p, "metrics/quality.json"), _json(p, "metrics/retrieval.json")
    assert h["samples_in"] == _json(p, "data/raw/metrics.json")["inputs"]
    assert h["kept"] == quality["kept"]
    assert h["precision"] == quality["synthetic"]["overall"]["precision"]
    assert h["recall"] == quality["synthetic"]["overall"]["recall"]
    assert h["leaking_pairs"] == _json(p, "metrics/split.json")["leakage"]["total"]
    maps = {
        (m, d): v["hash"]["map"]
        for m, spec in retrieval["models"].items()
        for d, v in spec["directions"].items()
    }
    best = max(maps, key=lambda k: maps[k])
    assert (h["best_model"], h["best_direction"], h["best_map"]) == (*best, maps[best])
    assert h["models"] == len(retrieval["models"])

    run = report.latest_run(p)
    lines = (p / ".cmrops" / "runs.jsonl").read_text().splitlines()
    assert run["run_id"] == json.loads(lines[-1])["run_id"]
    assert run["data_version"] == runlog.data_version(p)
    assert run["data_version"]
    assert "+g" in run["data_version"]
    assert list(run["stages"]["stage"]) == [
        "collect", "preprocess", "align", "label", "clean", "split", "train", "evaluate"
    ]  # fmt: skip
    assert run["status"] == "success"


def test_label_tables(dashboard_project: Path) -> None:
    p = dashboard_project
    lab = _json(p, "data/labelled/metrics.json")
    counts = report.label_counts(p)
    assert dict(zip(counts["label"], counts["samples"], strict=True)) == lab["per_label"]
    sources = report.label_sources(p)
    assert sources["labels"].sum() == lab["labels"]
    agreement = report.label_agreement(p)
    pairs = agreement["pairs"].set_index("pair")
    for pair, a in lab["agreement"].items():
        assert pairs.loc[pair, "mean_kappa"] == a["mean_kappa"]
        assert pairs.loc[pair, "samples"] == a["samples"]
    queue = report.review_queue(p)
    assert len(queue) == lab["review"]["queue"]
    assert queue["reason"].value_counts().to_dict() == lab["review"]["by_reason"]
    interim = _json(p, "data/interim/metrics.json")
    assert len(report.caption_lengths(p)) == interim["captions_kept"]
    sizes = report.image_sizes(p)
    assert len(sizes) == interim["kept"]
    assert sizes["format"].value_counts().to_dict() == interim["formats"]
    rules = report.clean_rules(p).set_index("rule")
    quality = _json(p, "metrics/quality.json")
    assert list(rules.index) == quality["rule_order"]
    assert rules.loc["exact_duplicate", "dropped"] == quality["rules"]["exact_duplicate"]["dropped"]


def test_split_tables(dashboard_project: Path) -> None:
    p = dashboard_project
    split = _json(p, "metrics/split.json")
    sizes = report.split_sizes(p)
    assert dict(zip(sizes["set"], sizes["samples"], strict=True)) == split["sizes"]
    bal = report.split_balance(p)
    for label, by_set in split["labels"]["per_label"].items():
        for s, size in split["sizes"].items():
            row = bal[(bal["label"] == label) & (bal["set"] == s)].iloc[0]
            assert row["samples"] == by_set[s]
            assert row["share"] == pytest.approx(by_set[s] / size)
    leak = report.leakage(p)
    assert leak["total"] == split["leakage"]["total"]
    assert leak["pairs"]["pairs"].sum() == sum(
        n for kinds in split["leakage"]["pairs"].values() for n in kinds.values()
    )


def test_retrieval_table_curves_and_history(dashboard_project: Path) -> None:
    p = dashboard_project
    retrieval = _json(p, "metrics/retrieval.json")
    table = report.retrieval_table(p)
    assert len(table) == sum(len(m["directions"]) for m in retrieval["models"].values())
    for _, row in table.iterrows():
        d = retrieval["models"][row["model"]]["directions"][row["direction"]]
        assert row["map"] == d["hash"]["map"]
        assert row["map_database_order"] == d["hash"]["map_database_order"]
        assert row["float_map"] == d["float"]["map"]
        assert row["P@10"] == d["hash"]["precision_at"]["10"]
        assert row["bits"] == retrieval["models"][row["model"]]["bits"]
    for kind in ("pr", "pk"):
        c = report.curves(p, kind)
        for (model, direction), part in c.groupby(["model", "direction"]):
            rel = retrieval["models"][model]["directions"][direction]["plots"][kind]
            assert part.drop(columns=["model", "method", "bits", "direction"]).to_dict(
                "records"
            ) == json.loads((p / "plots" / rel).read_text())
    hist = report.history(p)
    last = hist[hist["run_id"] == report.latest_run(p)["run_id"]]
    assert len(last) == len(table)
    for _, row in last.iterrows():
        expect = retrieval["models"][row["model"]]["directions"][row["direction"]]["hash"]["map"]
        assert row["map"] == pytest.approx(expect)


def test_code_health_and_bit_stats_agree_with_evaluate(dashboard_project: Path) -> None:
    p = dashboard_project
    retrieval = _json(p, "metrics/retrieval.json")
    health = report.code_health(p)
    assert len(health) == 2 * len(retrieval["models"])
    for _, row in health.iterrows():
        ch = retrieval["models"][row["model"]]["code_health"][row["modality"]]
        assert row["balance_deviation"] == ch["bit_balance"]["mean_abs_deviation"]
        stats = report.bit_stats(p, row["model"], row["modality"])
        bal = stats["balance"]
        assert stats["n_codes"] == ch["codes"]
        assert len(bal) == row["bits"]
        assert bal["deviation"].mean() == pytest.approx(ch["bit_balance"]["mean_abs_deviation"],
                                                        abs=1e-6)  # fmt: skip
        assert (
            int(((bal["p_one"] == 0) | (bal["p_one"] == 1)).sum())
            == ch["bit_balance"]["constant_bits"]
        )
        corr = stats["correlation"]
        off = corr[(corr["bit_i"] != corr["bit_j"])]["corr"].dropna()
        expect = ch["mean_abs_bit_correlation"]
        if expect is None:
            assert off.empty
        else:
            assert float(np.abs(off).mean()) == pytest.approx(expect, abs=1e-6)
    with pytest.raises(report.ReportError, match="cmrops train"):
        report.bit_stats(p, "no-such-model", "image")


def test_an_empty_project_gives_empty_tables(tmp_path: Path) -> None:
    empty = tmp_path
    for fn in (report.funnel, report.quarantine, report.quarantine_counts, report.clean_rules,
               report.caption_lengths, report.image_sizes, report.label_counts,
               report.label_sources, report.review_queue, report.split_sizes,
               report.split_balance, report.retrieval_table, report.history,
               report.code_health):  # fmt: skip
        assert fn(empty).empty, fn.__name__
    assert report.headline(empty) == {}
    assert report.latest_run(empty) == {}
    assert report.model_names(empty) == []
    assert report.leakage(empty)["total"] is None
    assert report.curves(empty, "pr").empty
    assert report.stamp(empty) == ()
    assert report.missing(empty, ["split", "retrieval"]) == [
        "metrics/split.json", "metrics/retrieval.json"
    ]  # fmt: skip


def test_damaged_outputs_say_what_to_rerun(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "split.json").write_text("{not json")
    with pytest.raises(report.ReportError, match=r"split\.json.*rerun `cmrops split`"):
        report.split_sizes(tmp_path)
    (tmp_path / "metrics" / "retrieval.json").write_text("[1, 2]")
    with pytest.raises(report.ReportError, match="cmrops evaluate"):
        report.retrieval_table(tmp_path)
    (tmp_path / "data" / "clean").mkdir(parents=True)
    (tmp_path / "data" / "clean" / "quarantine.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(report.ReportError, match="cmrops clean"):
        report.quarantine(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        report.curves(tmp_path, "roc")


def test_the_stamp_changes_when_a_stage_rewrites_an_output(
    dashboard_project: Path, tmp_path: Path
) -> None:
    p = tmp_path / "p"
    (p / "metrics").mkdir(parents=True)
    shutil.copy(dashboard_project / "metrics" / "split.json", p / "metrics" / "split.json")
    before = report.stamp(p)
    assert [rel for rel, *_ in before] == ["metrics/split.json"]
    st = (p / "metrics" / "split.json").stat()
    os.utime(p / "metrics" / "split.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert report.stamp(p) != before


# --------------------------------------------------------------------------- video and audio


def _thumbs(project: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (project / "data" / "interim").mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("sample_id", pa.string()), ("jpeg", pa.binary())])
    pq.write_table(pa.Table.from_pylist(rows, schema), project / "data/interim/thumbs.parquet")


def _strip() -> bytes:
    from PIL import Image

    from cmrops.media.video import thumbnail_strip

    return thumbnail_strip([Image.new("RGB", (96, 64), (200, 30, 30))] * 3, height=24)


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"RIFF\x24\x19\x00\x00WAVEfmt ", "audio/wav"),
        (b"fLaC\x00\x00\x00\x22", "audio/flac"),
        (b"OggS\x00\x02\x00\x00", "audio/ogg"),
        (b"ID3\x04\x00\x00\x00\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\xc4\x00", "audio/mpeg"),  # MPEG-1 layer III frame, no ID3 tag
        (b"\xff\xf3\x88\xc4\x00", "audio/mpeg"),  # MPEG-2 (16 kHz)
        (b"\x00\x00\x00\x1cftypM4A ", "audio/mp4"),
        (b"RIFF\x24\x19\x00\x00AVI LIST", None),  # RIFF, but a video
        (b"\x00junk", None),
        (b"", None),
    ],
)
def test_audio_mime_from_magic_bytes(data: bytes, mime: str | None) -> None:
    assert report.audio_mime(data) == mime


def test_audio_clip_reads_real_encodings(tmp_path: Path) -> None:
    from cmrops.media import synthetic as syn

    wave = syn.tone("chirp_up", seconds=0.2)
    for fmt, mime in [("WAV", "audio/wav"), ("FLAC", "audio/flac"), ("OGG", "audio/ogg"),
                      ("MP3", "audio/mpeg")]:  # fmt: skip
        data = syn.encode_audio(wave, 16_000, fmt)
        p = tmp_path / fmt  # the content-addressed store has no extensions
        p.write_bytes(data)
        clip = report.audio_clip(p)
        assert (clip.data, clip.mime, clip.error) == (data, mime, None), fmt


def test_audio_clip_errors_never_raise(tmp_path: Path) -> None:
    from cmrops.media import synthetic as syn

    assert "no audio stored" in (report.audio_clip(None).error or "")
    assert "missing" in (report.audio_clip(tmp_path / "nope").error or "")
    assert "cannot read" in (report.audio_clip(tmp_path).error or "")  # a folder
    (tmp_path / "empty").write_bytes(b"")
    assert "empty file" in (report.audio_clip(tmp_path / "empty").error or "")
    (tmp_path / "junk").write_bytes(syn.not_media())
    junk = report.audio_clip(tmp_path / "junk")
    assert (junk.data, junk.mime) == (None, None)
    assert "not an audio format" in (junk.error or "")
    (tmp_path / "big").write_bytes(syn.encode_audio(syn.tone("noise", seconds=1.0), 16_000))
    big = report.audio_clip(tmp_path / "big", max_bytes=1000)  # a bounded read: not loaded
    assert big.data is None
    assert "0.0 MiB a preview plays" in (big.error or "")
    assert report.audio_clip(tmp_path / "big", max_bytes=1 << 20).mime == "audio/wav"


def test_video_strip_from_thumbs_or_why_not(tmp_path: Path) -> None:
    absent = report.video_strip(tmp_path, "a")
    assert absent.data is None
    assert "thumbs.parquet is not there" in (absent.error or "")
    assert "cmrops preprocess" in (absent.error or "")
    jpeg = _strip()
    _thumbs(tmp_path, [{"sample_id": "a", "jpeg": jpeg}])
    t = report.video_strip(tmp_path, "a")
    assert (t.data, t.mime, t.width, t.height, t.error) == (jpeg, "image/jpeg", 108, 24, None)
    quarantined = report.video_strip(tmp_path, "b")  # preprocess could not decode it
    assert quarantined.data is None
    assert "no keyframe strip stored for b" in (quarantined.error or "")
    assert report.video_strip(tmp_path, None).error
    _thumbs(tmp_path, [{"sample_id": "a", "jpeg": b"not a jpeg"}])
    assert "not an image" in (report.video_strip(tmp_path, "a").error or "")
    (tmp_path / "data/interim/thumbs.parquet").write_bytes(b"PAR1 truncated")
    damaged = report.video_strip(tmp_path, "a")  # this sample's error, not the page's
    assert damaged.data is None
    assert "rerun `cmrops preprocess`" in (damaged.error or "")


def test_media_of_follows_preprocess_then_the_sample_tables(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert report.media_of(tmp_path) == "image"  # nothing ran yet
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    pq.write_table(pa.table({"sample_id": ["a"]}), raw / "samples.parquet")
    assert report.media_of(tmp_path) == "image"  # written before video and audio
    pq.write_table(pa.table({"sample_id": ["a", "b"], "media": [None, "audio"]}),
                   raw / "samples.parquet")  # fmt: skip
    assert report.media_of(tmp_path) == "audio"
    meta = tmp_path / "data" / "interim" / "features" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"media": "video"}))
    assert report.media_of(tmp_path) == "video"
    meta.write_text(json.dumps({"media": "smell"}))
    with pytest.raises(report.ReportError, match=r"unknown media 'smell'.*cmrops preprocess"):
        report.media_of(tmp_path)


def test_preview_dispatches_on_the_media(tmp_path: Path) -> None:
    from PIL import Image

    from cmrops.media import synthetic as syn

    Image.new("RGB", (300, 200), (0, 90, 200)).save(tmp_path / "img", format="JPEG")
    (tmp_path / "wav").write_bytes(syn.encode_audio(syn.tone("beeps", seconds=0.3), 16_000))
    _thumbs(tmp_path, [{"sample_id": "v", "jpeg": _strip()}])
    image = report.preview(tmp_path, "i", tmp_path / "img", "image", max_side=64)
    assert (image.mime, image.is_audio) == ("image/png", False)
    assert Image.open(io.BytesIO(image.data or b"")).size == (64, 43)
    video = report.preview(tmp_path, "v", tmp_path / "img", "video")  # the strip, not the file
    assert (video.data, video.mime, video.is_audio) == (_strip(), "image/jpeg", False)
    audio = report.preview(tmp_path, "a", tmp_path / "wav", "audio")
    assert (audio.mime, audio.is_audio) == ("audio/wav", True)
    assert audio.data == (tmp_path / "wav").read_bytes()
    for media, path in [("image", tmp_path / "wav"), ("video", None), ("audio", tmp_path / "img"),
                        ("smell", tmp_path / "img")]:  # fmt: skip
        bad = report.preview(tmp_path, "nope", path, media)
        assert (bad.data, bad.mime, bad.is_audio) == (None, None, False), media
        assert bad.error, media
