"""The Ray engine against the local one: the same input gives the same bytes (preprocess with the
real default encoders, clean's partitioned near-duplicate search, the DAG's per-shard path), a
Ray worker killed mid-run is a clear error and the rerun redoes only what was not recorded.

One real local Ray cluster (127.0.0.1, 2 CPUs) serves the whole module."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmrops import engine, pipeline
from cmrops.engine import EngineError, EngineParams, RayEngine
from cmrops.params import ParamsError, load_section
from cmrops.preprocessing.decode import process_shard
from cmrops.preprocessing.embed import Embedder
from cmrops.sources.synthetic import DefectRates
from cmrops.stages import collect, preprocess
from cmrops.stages.clean import CleanParams
from cmrops.stages.clean import run as clean
from cmrops.stages.label import LabelParams
from cmrops.stages.label import run as label
from tests.tiny_models import tiny_clip

PRE = preprocess.PreprocessParams(n_workers=2, shard_size=25, device="cpu", embeddings=True)
PRE_NO_EMB = dataclasses.replace(PRE, embeddings=False, tokenizer="words")
PRE_FILES = (
    "samples.parquet",
    "quarantine.parquet",
    "metrics.json",
    "features/meta.json",
    "features/image.npy",
    "features/text.npy",
)
CLEAN_FILES = ("samples.parquet", "quarantine.parquet", "groups.parquet", "quality.json")


def _bytes(folder: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}


@pytest.fixture(scope="module")
def ray_engine() -> Iterator[RayEngine]:
    eng = RayEngine(EngineParams(kind="ray", num_cpus=2, search_chunk=16)).start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("engine_raw")
    spec = collect.SourceSpec(
        name="synthetic", kind="synthetic", n=100, seed=3, defects=DefectRates()
    )
    collect.run(collect.CollectParams(sources=(spec,)), root)
    return root


@pytest.fixture(scope="module")
def local_out(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("interim_local")
    preprocess.run(PRE, raw, out)  # no session: the local engine
    return out


def test_ray_cluster_is_local_and_on_loopback(ray_engine: RayEngine) -> None:
    import ray

    nodes = ray.nodes()
    assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"]
    assert ray.cluster_resources()["CPU"] == 2
    assert ray_engine.gpus() == 0


def test_preprocess_on_ray_is_byte_identical_to_local(
    ray_engine: RayEngine, raw: Path, local_out: Path, tmp_path: Path
) -> None:
    with engine.session(ray_engine):
        preprocess.run(PRE, raw, tmp_path)
    timing = json.loads((tmp_path / "throughput.json").read_text())
    assert timing["engine"] == "ray"
    assert timing["shards_decoded"] == timing["shards_embedded"] == 4
    assert json.loads((local_out / "throughput.json").read_text())["engine"] == "local"
    ours, theirs = _bytes(tmp_path, PRE_FILES), _bytes(local_out, PRE_FILES)
    assert len(ours) == len(PRE_FILES)
    assert ours == theirs


@pytest.fixture(scope="module")
def labelled(local_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("labelled")
    label(LabelParams(auto_methods=("provided", "keyword")), local_out, out)
    return out


def test_clean_on_ray_is_byte_identical_to_local(
    ray_engine: RayEngine, raw: Path, local_out: Path, labelled: Path, tmp_path: Path
) -> None:
    def run_clean(out: Path) -> dict[str, Any]:
        clean(CleanParams(), local_out, labelled, out, raw_dir=raw)
        return json.loads((out / "throughput.json").read_text())["near_image_search"]

    local = run_clean(tmp_path / "local")
    with engine.session(ray_engine):
        on_ray = run_clean(tmp_path / "ray")
    assert local["queried"] == on_ray["queried"] == local["index_size"] > 16  # several chunks
    metrics = json.loads((tmp_path / "local" / "quality.json").read_text())
    assert metrics["duplicates"]["near_image_pairs"]["candidates"] > 0  # pairs were found
    assert _bytes(tmp_path / "ray", CLEAN_FILES) == _bytes(tmp_path / "local", CLEAN_FILES)
    assert len(_bytes(tmp_path / "ray", CLEAN_FILES)) == len(CLEAN_FILES)


def test_dag_shard_path_runs_on_the_engine_of_params(
    ray_engine: RayEngine, raw: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """preprocess_plan -> preprocess_shards per group (engine: ray from params) -> the stage's
    own run, which only merges: the bytes of a local run."""
    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "raw").symlink_to(raw)
    pre = dataclasses.replace(PRE_NO_EMB, task_rows=1)  # one shard per mapped task
    params = {"engine": {"kind": "ray"}, "preprocess": dataclasses.asdict(pre)}
    (work / "params.yaml").write_text(json.dumps(params))
    caplog.set_level(logging.INFO, logger="cmrops.stages.preprocess")
    groups = pipeline.preprocess_plan(work, str(work / "params.yaml"))
    assert groups == [[0], [1], [2], [3]]
    for g in groups:
        assert pipeline.preprocess_shards(g, work, str(work / "params.yaml")) == g
    assert sum("(engine ray)" in r.getMessage() for r in caplog.records) == 4
    merged = preprocess.run(PRE_NO_EMB, raw, work / "data" / "interim")
    fresh = tmp_path / "fresh"
    assert preprocess.run(PRE_NO_EMB, raw, fresh) == merged
    timing = json.loads((work / "data" / "interim" / "throughput.json").read_text())
    assert timing["shards_decoded"] == 0  # every shard was recorded by the mapped tasks
    assert _bytes(work / "data" / "interim", PRE_FILES) == _bytes(fresh, PRE_FILES)


KILL_FILE = "kill-shard"


def killing_decode_job(job: tuple[Any, ...]) -> dict[str, Any]:
    """A decode task that SIGKILLs its own Ray worker on the shard named in ``KILL_FILE``."""
    index, shard_dir = job[0], Path(job[3])
    marker = shard_dir.parent / KILL_FILE
    if marker.is_file() and int(marker.read_text()) == index:
        os.kill(os.getpid(), signal.SIGKILL)
    index, table, *rest = job  # the shard's rows arrive as an Arrow table
    return process_shard(index, table.to_pylist(), *rest)


def test_killed_ray_worker_is_a_clear_error_and_the_rerun_completes(
    ray_engine: RayEngine,
    raw: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fresh = tmp_path / "fresh"
    preprocess.run(PRE_NO_EMB, raw, fresh)
    out = tmp_path / "killed"
    out.mkdir()
    (out / KILL_FILE).write_text("2")
    # the Ray workers import this test module for the task (it is pickled by reference)
    monkeypatch.setattr(preprocess, "decode_job", killing_decode_job)
    with engine.session(ray_engine), pytest.raises(EngineError, match="rerun the stage"):
        preprocess.run(PRE_NO_EMB, raw, out)
    shards = out / "shards"
    assert not (out / "samples.parquet").exists()
    assert not (shards / "shard-00002.decode.json").exists()  # nothing of it recorded
    recorded = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.decode.json")}

    (out / KILL_FILE).unlink()
    with engine.session(ray_engine):
        preprocess.run(PRE_NO_EMB, raw, out)
    timing = json.loads((out / "throughput.json").read_text())
    assert timing["shards_decoded"] == 4 - len(recorded)  # only the unrecorded ones
    assert {n: (shards / n).stat().st_mtime_ns for n in recorded} == recorded
    assert _bytes(out, PRE_FILES) == _bytes(fresh, PRE_FILES)
    assert not list(shards.glob(".*.tmp"))


class KillingEmbedder(Embedder):
    """An encoder worker that SIGKILLs its own Ray actor on the shard named in ``KILL_FILE``."""

    def embed(self, shard_dir: str, stem: str) -> dict[str, Any]:
        marker = Path(shard_dir).parent / KILL_FILE
        if marker.is_file() and f"shard-{int(marker.read_text()):05d}" == stem:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().embed(shard_dir, stem)


def killing_embedders(eng: Any, params: Any, device: str, n_shards: int) -> Any:
    factory = functools.partial(KillingEmbedder, params, device, 1)
    return eng.actors(factory, size=1, gpu=False)


def test_killed_encoder_actor_is_a_clear_error_and_the_rerun_completes(
    ray_engine: RayEngine,
    raw: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
    params = dataclasses.replace(
        PRE, tokenizer="words", image_encoder=str(model), text_encoder=str(model), batch_size=8
    )
    monkeypatch.setattr(preprocess, "embedders", killing_embedders)  # 1 thread, on Ray
    fresh = tmp_path / "fresh"
    with engine.session(ray_engine):
        preprocess.run(params, raw, fresh)
    out = tmp_path / "killed"
    out.mkdir()
    (out / KILL_FILE).write_text("1")
    with engine.session(ray_engine), pytest.raises(EngineError, match="worker died"):
        preprocess.run(params, raw, out)
    shards = out / "shards"
    assert not (out / "samples.parquet").exists()
    assert not (shards / "shard-00001.embed.json").exists()
    embedded = {p.name: p.stat().st_mtime_ns for p in shards.glob("shard-*.embed.json")}

    (out / KILL_FILE).unlink()
    with engine.session(ray_engine):
        preprocess.run(params, raw, out)
    timing = json.loads((out / "throughput.json").read_text())
    assert timing["shards_embedded"] == 4 - len(embedded)
    assert {n: (shards / n).stat().st_mtime_ns for n in embedded} == embedded
    assert _bytes(out, PRE_FILES) == _bytes(fresh, PRE_FILES)
    assert len(_bytes(out, PRE_FILES)) == len(PRE_FILES)
    assert not list(shards.glob("*.pixels.npy"))


def die_on_two(x: int) -> int:
    if x == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def test_local_engine_worker_death_is_the_same_clear_error() -> None:
    eng = engine.LocalEngine()
    assert sorted(eng.map_unordered(die_on_two, [0, 1, 3], workers=2)) == [(0, 0), (1, 10), (3, 30)]
    assert list(eng.map_unordered(die_on_two, [1], workers=0, shared=None)) == [(1, 10)]
    with pytest.raises(EngineError, match=r"died running die_on_two .*rerun the stage"):
        list(eng.map_unordered(die_on_two, [2], workers=1))


def test_engine_section_loads_strictly(tmp_path: Path) -> None:
    params_yaml = Path(__file__).parents[1] / "params.yaml"
    assert load_section(params_yaml, engine.SECTION, EngineParams) == EngineParams()
    bad = tmp_path / "params.yaml"
    bad.write_text(json.dumps({"engine": {"kind": "ray", "adress": "auto"}}))
    with pytest.raises(ParamsError, match=r"unknown key.*adress.*allowed: address"):
        load_section(bad, engine.SECTION, EngineParams)
    bad.write_text(json.dumps({"engine": {"kind": "local", "address": "auto"}}))
    with pytest.raises(ParamsError, match="only used with kind: ray"):
        load_section(bad, "engine", EngineParams)
    bad.write_text(json.dumps({"engine": {"kind": "spark"}}))
    with pytest.raises(ParamsError, match="'spark' is not one of"):
        load_section(bad, engine.SECTION, EngineParams)
