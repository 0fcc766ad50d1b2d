"""The preprocess stage end to end: bad input, invariants, idempotence, kill-and-resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cmrops import cli
from cmrops.params import load_section
from cmrops.schema import INTERIM_SAMPLES, QUARANTINE
from cmrops.stages.preprocess import PreprocessParams, run
from tests.raw_helpers import (
    RawSample,
    animated_gif,
    bad_images,
    encode,
    exif_rotated_jpeg,
    photo,
    write_raw,
)
from tests.tiny_models import tiny_clip

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("samples.parquet", "quarantine.parquet", "metrics.json", "features/meta.json")
NO_EMB = PreprocessParams(n_workers=2, shard_size=4, embeddings=False, tokenizer="words")


def _outputs(out: Path) -> dict[str, bytes]:
    files = [*OUTPUTS, "features/image.npy", "features/text.npy"]
    return {f: (out / f).read_bytes() for f in files if (out / f).is_file()}


def _good(
    key: str, seed: int, captions: tuple[str, ...] = ("a smooth colourful picture",)
) -> RawSample:
    return RawSample(key, encode(photo(96, 72, seed=seed), "JPEG", quality=90), captions)


def _mixed_samples() -> list[RawSample]:
    """Good images of every colour mode, every bad image and every bad caption of the issue."""
    jpeg = encode(photo(160, 120, seed=1), "JPEG", quality=90)
    samples = [
        RawSample(f"bad/{name}", data, (f"caption of {name}",))
        for name, (data, _) in bad_images(jpeg).items()
    ]
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 20, 40))
    samples += [
        RawSample(
            "ok/cmyk.jpg", encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"), ("cmyk",)
        ),
        RawSample(
            "ok/grey16.png",
            encode(Image.fromarray(np.full((40, 40), 50000, np.uint16)), "PNG"),
            ("grey",),
        ),
        RawSample(
            "ok/palette.png", encode(photo(40, 40, seed=2).convert("P"), "PNG"), ("palette",)
        ),
        RawSample("ok/alpha.png", encode(rgba, "PNG"), ("alpha",)),
        RawSample("ok/anim.gif", animated_gif(frames=4), ("animated",)),
        RawSample("ok/exif.jpg", exif_rotated_jpeg(64, 32, 6), ("rotated",)),
        _good("cap/megabyte", 3, (("long " * 220_000)[: 1 << 20], "short one")),
        _good("cap/nul", 4, ("a\x00 dog\x00",)),
        _good("cap/rtl", 5, ("\u202ea\u200b red\u200f bus\u202c",)),
        _good("cap/bom", 6, ("\ufeffa tree",)),
        _good("cap/empty", 7, ("\u200b\ufeff", "   ", "\x00")),
        _good("cap/none", 8, ()),
        _good("store/missing", 9),
        _good("store/tampered", 10),
        _good("store/escape", 11),
        _good("dup/first", 12, ("same",)),
    ]
    return samples


@pytest.fixture(scope="module")
def mixed_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    table = write_raw(raw, _mixed_samples())
    rows = table.to_pylist()
    by_key = {r["source_key"]: r for r in rows}
    (raw / by_key["store/missing"]["image_path"]).unlink()
    (raw / by_key["store/tampered"]["image_path"]).write_bytes(encode(photo(30, 30), "PNG"))
    by_key["store/escape"]["image_path"] = "../outside.jpg"
    dup = dict(by_key["dup/first"], source_key="dup/second")
    pq.write_table(pa.Table.from_pylist([*rows, dup], schema=table.schema), raw / "samples.parquet")
    return raw


@pytest.fixture(scope="module")
def mixed_out(mixed_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interim")
    run(NO_EMB, mixed_raw, out)
    return out


EXPECTED_REASONS = {
    "bad/truncated_jpeg": "truncated_image",
    "bad/truncated_jpeg_header": "truncated_image",
    "bad/truncated_png": "truncated_image",
    "bad/truncated_png_header": "truncated_image",
    "bad/zero_byte": "empty_file",
    "bad/html_as_jpg": "not_an_image",
    "bad/bomb_header": "decompression_bomb",
    "bad/one_by_one": "degenerate_size",
    "bad/hundred_thousand_by_one": "degenerate_size",
    "cap/empty": "empty_captions",
    "cap/none": "empty_captions",
    "store/missing": "missing_image",
    "store/tampered": "image_hash_mismatch",
    "store/escape": "path_escape",
    "dup/second": "duplicate_sample_id",
}


def test_every_bad_input_is_one_quarantine_row(mixed_out: Path) -> None:
    q = pq.read_table(mixed_out / "quarantine.parquet")
    assert q.schema.equals(QUARANTINE)
    got = {r["source_key"]: r for r in q.to_pylist()}
    assert {k: r["reason"] for k, r in got.items()} == EXPECTED_REASONS
    for r in got.values():
        assert r["stage"] == "preprocess"
        assert r["detail"]
        assert isinstance(json.loads(r["evidence"]), dict)
    assert json.loads(got["bad/bomb_header"]["evidence"])["pixels"] == 100_000**2
    assert json.loads(got["dup/second"]["evidence"])["kept_source_key"] == "dup/first"


def test_inputs_equal_kept_plus_quarantined(mixed_raw: Path, mixed_out: Path) -> None:
    n_in = pq.read_metadata(mixed_raw / "samples.parquet").num_rows
    kept = pq.read_table(mixed_out / "samples.parquet")
    metrics = json.loads((mixed_out / "metrics.json").read_text())
    assert metrics["in"] == n_in == kept.num_rows + metrics["quarantined"]
    assert metrics["kept"] == kept.num_rows == 11
    assert sum(metrics["quarantined_by_reason"].values()) == metrics["quarantined"]
    assert metrics["quarantined_by_reason"]["truncated_image"] == 4


def test_kept_rows_follow_the_contract(mixed_out: Path) -> None:
    table = pq.read_table(mixed_out / "samples.parquet")
    assert table.schema.equals(INTERIM_SAMPLES)
    for col in ("phash", "dhash", "caption_simhash"):
        assert table.schema.field(col).type == pa.uint64()
    ids = table["sample_id"].to_pylist()
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    rows = {r["source_key"]: r for r in table.to_pylist()}
    assert rows["ok/anim.gif"]["n_frames"] == 4
    assert rows["ok/anim.gif"]["format"] == "GIF"
    assert (rows["ok/exif.jpg"]["width"], rows["ok/exif.jpg"]["height"]) == (32, 64)
    assert rows["ok/cmyk.jpg"]["format"] == "JPEG"
    mb = rows["cap/megabyte"]
    assert len(mb["captions_norm"][0]) <= 1000
    assert mb["caption_chars_cut"] > 1_000_000
    assert mb["captions_norm"][1] == "short one"
    assert len(mb["token_counts"]) == 2
    assert rows["cap/nul"]["captions_norm"] == ["a dog"]
    assert rows["cap/rtl"]["captions_norm"] == ["a red bus"]
    assert rows["cap/bom"]["captions_norm"] == ["a tree"]
    assert rows["cap/bom"]["token_counts"] == [2]
    assert all(r["feature_row"] == -1 for r in rows.values())  # embeddings off
    assert json.loads((mixed_out / "features" / "meta.json").read_text())["embeddings"] is False


def test_rerun_is_byte_identical_and_does_no_work(mixed_raw: Path, mixed_out: Path) -> None:
    before = _outputs(mixed_out)
    run(NO_EMB, mixed_raw, mixed_out)
    assert _outputs(mixed_out) == before
    timing = json.loads((mixed_out / "throughput.json").read_text())
    assert timing["shards_decoded"] == 0
    assert timing["shards"] == 7


def test_output_does_not_depend_on_shards_or_workers(
    mixed_raw: Path, mixed_out: Path, tmp_path: Path
) -> None:
    other = dataclasses.replace(NO_EMB, shard_size=3, n_workers=1)
    run(other, mixed_raw, tmp_path)
    assert _outputs(tmp_path) == _outputs(mixed_out)
    run(NO_EMB, mixed_raw, tmp_path)  # back to 4 per shard: stale shard files are dropped
    assert _outputs(tmp_path) == _outputs(mixed_out)
    assert not list((tmp_path / "shards").glob("shard-0000[78].*"))


def test_missing_raw_table_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"samples\.parquet.*cmrops collect"):
        run(NO_EMB, tmp_path / "raw", tmp_path / "out")
    (tmp_path / "raw").mkdir()
    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "raw" / "samples.parquet")
    with pytest.raises(ValueError, match="missing column"):
        run(NO_EMB, tmp_path / "raw", tmp_path / "out")


def test_repository_params_section_loads_strictly() -> None:
    params = load_section(REPO / "params.yaml", "preprocess", PreprocessParams)
    assert params.embeddings
    assert params.image_encoder == "efficientnet-lite0"


# --------------------------------------------------------------------------- kill and resume


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from cmrops import cli
    from cmrops.preprocessing import embed
    from cmrops.stages import preprocess as stage

    kind, after = sys.argv[1], int(sys.argv[2])
    real_record, seen = stage.record, []

    def record_then_die(shard_dir, shard, record_kind, *args, **kw):
        real_record(shard_dir, shard, record_kind, *args, **kw)
        seen.append(record_kind)
        if seen.count(kind) == after:  # SIGKILL this run and its workers, mid-stage
            os.killpg(os.getpgid(0), signal.SIGKILL)

    stage.record = embed.record = record_then_die  # decode records, embed records
    sys.exit(cli.main(sys.argv[3:]))
    """
)


@pytest.fixture(scope="module")
def small_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw_small")
    samples = [
        _good(f"img/{i:02d}", 100 + i, (f"a red bus number {i}", "a cat on a mat"))
        for i in range(14)
    ]
    samples.append(RawSample("bad/trunc", encode(photo(64, 64), "PNG")[:300], ("cut",)))
    write_raw(raw, samples)
    return raw


@pytest.fixture(scope="module")
def clip_params(tmp_path_factory: pytest.TempPathFactory) -> PreprocessParams:
    """Embeddings on, through a tiny CLIP saved to disk (the real loading path, fast)."""
    model = tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    return PreprocessParams(
        n_workers=2,
        shard_size=3,
        tokenizer="words",
        image_encoder=str(model),
        text_encoder=str(model),
        batch_size=2,
        device="cpu",
        embeddings=True,
    )


@pytest.fixture(scope="module")
def clip_out(
    small_raw: Path, clip_params: PreprocessParams, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("interim_clip")
    run(clip_params, small_raw, out)
    return out


def _kill_then_resume(kind: str, params: PreprocessParams, raw: Path, tmp: Path) -> Path:
    """Run the CLI in a subprocess that SIGKILLs itself and its workers right after the 2nd shard
    record of ``kind``; check what it left, rerun it in this process; return the output dir."""
    params_file = tmp / "params.yaml"
    params_file.write_text(json.dumps({"preprocess": dataclasses.asdict(params)}))
    killed = tmp / "killed"
    argv = ["preprocess", "--params", str(params_file), "--raw", str(raw), "--out", str(killed)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, kind, "2", *argv],
        cwd=REPO,
        env=env,
        start_new_session=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (killed / "samples.parquet").exists()
    records = sorted((killed / "shards").glob(f"shard-*.{kind}.json"))
    assert len(records) == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in records}

    assert cli.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in records} == stamps  # not redone
    timing = json.loads((killed / "throughput.json").read_text())
    assert timing[{"decode": "shards_decoded", "embed": "shards_embedded"}[kind]] == 3
    assert timing["shards"] == 5
    assert not list((killed / "shards").glob(".*.tmp"))
    assert not list((killed / "shards").glob("*.pixels.npy"))
    return killed


@pytest.mark.slow
def test_kill_during_decode_and_resume_is_byte_identical(small_raw: Path, tmp_path: Path) -> None:
    params = PreprocessParams(n_workers=2, shard_size=3, tokenizer="words", embeddings=False)
    run(params, small_raw, tmp_path / "fresh")
    killed = _kill_then_resume("decode", params, small_raw, tmp_path)
    assert _outputs(killed) == _outputs(tmp_path / "fresh")


@pytest.mark.slow
def test_kill_during_embedding_and_resume_is_byte_identical(
    small_raw: Path, clip_params: PreprocessParams, clip_out: Path, tmp_path: Path
) -> None:
    killed = _kill_then_resume("embed", clip_params, small_raw, tmp_path)
    assert _outputs(killed) == _outputs(clip_out)
    assert len(_outputs(killed)) == 6  # features/{image,text}.npy included


def test_embeddings_rows_and_meta(clip_params: PreprocessParams, clip_out: Path) -> None:
    table = pq.read_table(clip_out / "samples.parquet")
    image = np.load(clip_out / "features" / "image.npy")
    text = np.load(clip_out / "features" / "text.npy")
    meta = json.loads((clip_out / "features" / "meta.json").read_text())
    assert table["feature_row"].to_pylist() == list(range(table.num_rows)) == list(range(14))
    assert image.shape == (14, 16)
    assert text.shape == (14, 16)
    assert image.dtype == text.dtype == np.float32
    assert np.allclose(np.linalg.norm(image, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    assert meta["image"]["dim"] == 16
    assert meta["text"]["encoder"] == clip_params.text_encoder
    # text row = normalised mean of the sample's caption embeddings
    from cmrops.encoders import load_text_encoder

    enc = load_text_encoder(clip_params.text_encoder, "cpu")
    caps = table["captions_norm"][5].as_py()
    mean = enc.encode(caps, batch_size=2, progress=False).mean(0)
    np.testing.assert_allclose(text[5], mean / np.linalg.norm(mean), atol=1e-5)


def test_leftover_pixels_of_another_encoder_size_are_not_reused(tmp_path: Path) -> None:
    from cmrops.preprocessing.shards import Shard, inputs_ready

    shard = Shard(0, [], "hash")
    np.save(tmp_path / "shard-00000.pixels.npy", np.zeros((0, 224, 224, 3), np.uint8))
    assert not inputs_ready(tmp_path, shard, 224)  # without the per-row counts
    np.save(tmp_path / "shard-00000.counts.npy", np.zeros(0, np.int64))
    assert inputs_ready(tmp_path, shard, 224)
    assert not inputs_ready(tmp_path, shard, 256)
    assert not inputs_ready(tmp_path, Shard(1, [], "hash"), 224)


def test_fanned_out_shard_tasks_count_in_the_stage_duration(
    small_raw: Path, tmp_path: Path
) -> None:
    """The Airflow fan-out (plan, one task per group, then the merge): the merge's timings hold
    the tasks' work, so the stage's duration is not just the merge's; their records are used
    once."""
    from cmrops.stages.preprocess import plan_shards, planned_tasks, run_shards

    params = PreprocessParams(
        n_workers=1, shard_size=3, task_rows=6, tokenizer="words", embeddings=False
    )
    groups = plan_shards(params, small_raw, tmp_path)
    assert len(groups) == planned_tasks(params, tmp_path) == 3  # 15 rows: shards of 3, 6 a task
    for group in groups:
        run_shards(params, small_raw, tmp_path, group)
    run(params, small_raw, tmp_path)
    timing = json.loads((tmp_path / "throughput.json").read_text())
    assert timing["shards_decoded"] == 0  # the merge found every shard done
    assert timing["shard_tasks"]["tasks"] == 3
    assert timing["seconds_with_shard_tasks"] >= timing["seconds_total"]
    assert timing["shard_tasks"]["wall_seconds"] > 0
    assert not list((tmp_path / "shards").glob("*.task.json"))
    run(params, small_raw, tmp_path)  # a rerun did no shard work
    assert json.loads((tmp_path / "throughput.json").read_text())["shard_tasks"]["tasks"] == 0
