"""The collect stage as a whole: idempotence, kill-and-resume, stable ids, CLI, CAS, params."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from cmrops.cas import ObjectStore, TooLargeError
from cmrops.cli import main
from cmrops.ids import sample_id
from cmrops.params import load_section
from cmrops.stages.collect import CollectParams
from tests.collect_util import by_key, check_balance, collect, image_bytes, write_image

REPO = Path(__file__).resolve().parents[1]


def _snapshot(out: Path) -> dict[str, bytes]:
    return {
        p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
    }


def _mixed_inputs(root: Path) -> list[dict]:
    folder = root / "photos"
    for i in range(4):
        write_image(folder / f"{i}.jpg", (60 * i, 20, 20))
        (folder / f"{i}.txt").write_text(f"photo {i}\n")
    (folder / "lonely.jpg").write_bytes(b"")
    with tarfile.open(root / "s.tar", "w") as tf:
        for key, data in (
            ("a.jpg", image_bytes((1, 2, 3))),
            ("a.txt", b"from a tar"),
            ("../x.txt", b"evil"),
        ):
            ti = tarfile.TarInfo(key)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    (root / "m.csv").write_text("image,captions\nphotos/0.jpg,photo 0\nphotos/1.jpg,other\n")
    return [
        {"name": "syn", "kind": "synthetic", "n": 60, "seed": 1},
        {"name": "photos", "kind": "folder", "path": "photos"},
        {"name": "web", "kind": "webdataset", "shards": ["s.tar"]},
        {"name": "csv", "kind": "manifest", "path": "m.csv"},
    ]


def test_rerun_is_byte_identical_and_independent_of_the_folder(tmp_path):
    sources = _mixed_inputs(tmp_path)
    out, other = tmp_path / "raw", tmp_path / "raw2"
    m = collect(out, *sources, base=tmp_path)
    check_balance(out, m)
    assert m["sources"]["csv"]["quarantined_by_reason"] == {"duplicate_input": 1}
    first = _snapshot(out)
    assert {
        "samples.parquet",
        "quarantine.parquet",
        "synthetic_truth.parquet",
        "metrics.json",
    } <= set(first)
    assert collect(out, *sources, base=tmp_path) == m
    assert _snapshot(out) == first
    collect(other, *sources, base=tmp_path)
    assert _snapshot(other) == first


def test_ids_stay_stable_when_data_is_added(tmp_path):
    folder = tmp_path / "d"
    for i in range(2):
        write_image(folder / f"{i}.jpg", (i, 50, 50))
        (folder / f"{i}.txt").write_text(f"caption {i}\n")
    out = tmp_path / "raw"
    spec = {"name": "f", "kind": "folder", "path": str(folder)}
    collect(out, spec)
    before = {k: r["sample_id"] for k, r in by_key(out).items()}
    write_image(folder / "new.jpg", (9, 9, 9))
    (folder / "new.txt").write_text("added later\n")
    (folder / "0.jpg").rename(folder / "renamed.jpg")  # renaming keeps the content id
    (folder / "0.txt").rename(folder / "renamed.txt")
    collect(out, spec)
    after = {k: r["sample_id"] for k, r in by_key(out).items()}
    assert after["1.jpg"] == before["1.jpg"]
    assert after["renamed.jpg"] == before["0.jpg"]
    assert len(after) == 3


def _write_params(path: Path, sources: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"collect": {"sources": sources}, "split": {"seed": 1}}))
    return path


def test_killed_run_then_rerun_equals_a_clean_run(tmp_path):
    sources = [{"name": "syn", "kind": "synthetic", "n": 800, "seed": 5}]
    params = _write_params(tmp_path / "params.yaml", sources)
    ref, out = tmp_path / "ref", tmp_path / "raw"
    assert main(["collect", "--params", str(params), "--out", str(ref)]) == 0

    cmd = [sys.executable, "-m", "cmrops.cli", "collect", "--params", str(params), "--out"]
    with (tmp_path / "stderr.txt").open("wb") as err:
        proc = subprocess.Popen([*cmd, str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "objects").is_dir() and sum(1 for _ in (out / "objects").rglob("*")) > 20:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
    log = (tmp_path / "stderr.txt").read_text(errors="replace")
    assert code == -signal.SIGKILL, f"the run ended ({code}) before it was killed:\n{log}"
    assert not (out / "samples.parquet").exists()  # tables come last

    # What a crash can also leave: temp files, a torn object, an object nothing refers to.
    objects = out / "objects"
    (objects / ".incoming-leftover").write_bytes(b"partial")
    needed = next(iter(by_key(ref).values()))["image_sha256"]
    torn = objects / needed[:2] / needed
    torn.parent.mkdir(exist_ok=True)
    torn.write_bytes(b"torn")
    (objects / "00").mkdir(exist_ok=True)
    (objects / "00" / ("00" * 32)).write_bytes(b"stale")

    assert main(["collect", "--params", str(params), "--out", str(out)]) == 0
    assert _snapshot(out) == _snapshot(ref)


def test_cli_resolves_paths_against_the_params_file(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    write_image(project / "photos" / "a.jpg")
    (project / "photos" / "a.txt").write_text("hello\n")
    params = _write_params(
        project / "params.yaml", [{"name": "f", "kind": "folder", "path": "photos"}]
    )
    monkeypatch.chdir(tmp_path)
    assert main(["collect", "--params", str(params), "--out", "raw"]) == 0
    printed = capsys.readouterr().out
    assert "1 inputs -> 1 samples kept, 0 quarantined" in printed
    assert (tmp_path / "raw" / "samples.parquet").is_file()


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([{"name": "f", "kind": "folder", "path": "missing_dir"}], "missing_dir"),
        ([{"name": "f", "kind": "folder"}], "needs 'path'"),
        ([{"name": "f", "kind": "folder", "path": "x", "n": 5}], "'n' does not apply"),
        ([{"name": "f", "kind": "nope"}], "'nope' is not one of"),
        ([{"name": "a", "kind": "synthetic"}, {"name": "a", "kind": "synthetic"}], "unique"),
    ],
)
def test_cli_reports_bad_params_in_one_line(tmp_path, capsys, sources, message):
    params = _write_params(tmp_path / "params.yaml", sources)
    assert main(["collect", "--params", str(params), "--out", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert "\n" not in err
    assert not (tmp_path / "raw" / "samples.parquet").exists()


def test_sample_id_formula():
    sha = hashlib.sha256(b"img").hexdigest()
    expected = hashlib.sha256(f'{sha}\n["a", "b"]'.encode()).hexdigest()[:16]
    assert sample_id(sha, ["a", "b"]) == expected
    assert sample_id(sha, ["a", "b"]) != sample_id(sha, ["b", "a"])
    assert sample_id(sha, ["a\nb"]) != sample_id(sha, ["a", "b"])
    with pytest.raises(ValueError, match="64 lower-case hex"):
        sample_id("ABC", ["a"])


def test_object_store(tmp_path):
    store = ObjectStore(tmp_path / "objects")
    a = store.put_bytes(b"hello")
    assert a.relpath == f"objects/{a.sha256[:2]}/{a.sha256}"
    assert store.put_bytes(b"hello") == a
    src = tmp_path / "f.bin"
    src.write_bytes(b"hello")
    assert store.put_file(src, 100) == a
    with pytest.raises(TooLargeError):
        store.put_file(src, 3)
    b = store.put_bytes(b"other")
    files = sorted(p.name for p in (tmp_path / "objects").rglob("*") if p.is_file())
    assert files == sorted([a.sha256, b.sha256])
    assert os.stat(store.path(a.sha256)).st_mode & 0o777 == 0o644
    assert store.prune({a.sha256}) == 1
    assert not store.path(b.sha256).parent.exists()
    (tmp_path / "objects" / ".incoming-x").write_bytes(b"")
    assert store.sweep_temporary() == 1


def test_project_params_and_dvc_stage():
    params = load_section(REPO / "params.yaml", "collect", CollectParams)
    assert [s.kind for s in params.sources] == ["synthetic"]
    assert CollectParams().sources[0].kind == "synthetic"  # embedded default without params
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["collect"]
    assert stage["cmd"] == (
        "cmrops collect --params params.yaml --out data/raw --digest metrics/dvc/collect.json "
        "--plots plots"
    )
    assert stage["params"] == ["collect"]
    for dep in stage["deps"]:
        assert (REPO / dep).exists(), dep
    for module in ("cmrops/stages/collect.py", "cmrops/sources", "cmrops/cas.py", "cmrops/ids.py"):
        assert module in stage["deps"]
