"""Releases you can go back to: two versioned runs of a small real DVC project (git + DVC, a
local remote and an S3 one on loopback), then the first restored bit for bit from the remote
into an empty cache, with no local record of it - and the git commit, the tag and the remote
registry checked on the way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmrops import releases, versioning
from tests.test_dvc_support import env, git_commit, sh

MAKE = """\
import json, pathlib, random, yaml
p = yaml.safe_load(open("params.yaml"))["collect"]
rng = random.Random(p["seed"])
pathlib.Path("out").mkdir(exist_ok=True)
pathlib.Path("out/data.bin").write_bytes(bytes(rng.randrange(256) for _ in range(50_000)))
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/m.json").write_text(json.dumps({"seed": p["seed"], "score": rng.random()}))
pathlib.Path("plots").mkdir(exist_ok=True)
pathlib.Path("plots/p.json").write_text(json.dumps([{"x": i, "y": rng.random()} for i in range(5)]))
"""

DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps: [make.py]
    params: [collect]
    outs: [out/data.bin]
    metrics:
      - metrics/m.json:
          cache: false
    plots:
      - plots/p.json:
          cache: false
"""


def _project(base: Path, remote_url: str | None = None) -> Path:
    p = base / "proj"
    p.mkdir(parents=True)
    (p / "make.py").write_text(MAKE)
    (p / "dvc.yaml").write_text(DVC_YAML)
    (p / "params.yaml").write_text("collect:\n  seed: 1\n")
    (p / ".gitignore").write_text("/.cmrops/\n")
    sh(["git", "init", "-q", "-b", "main"], p)
    sh(["dvc", "init", "-q"], p)
    (p / ".dvcignore").write_text("/.cmrops/\n")
    versioning.configure_remote(p, "store", remote_url or str(base / "remote"), default=True)
    git_commit(p, "project")
    return p


def _run(project: Path, seed: int, remote: str | None = None) -> releases.Release:
    (project / "params.yaml").write_text(f"collect:\n  seed: {seed}\n")
    sh(["dvc", "repro", "-q"], project)
    versioning.push(project, remote)
    return releases.create(project, run_id=f"run-{seed}", remote=remote)


def _git(project: Path, *args: str) -> str:
    return sh(["git", *args], project).stdout.strip()


def test_two_releases_then_the_first_back_from_the_remote(tmp_path: Path) -> None:
    project = _project(tmp_path)
    (project / "notes.txt").write_text("the user's own staged change\n")
    _git(project, "add", "notes.txt")

    first = _run(project, 1)
    first_bytes = (project / "out/data.bin").read_bytes()
    first_metrics = (project / "metrics/m.json").read_bytes()
    # git: the release's small files on the branch, tagged; the user's staged file left alone
    assert first.git is not None
    assert first.git["tag"] == f"release/{first.id}"
    assert _git(project, "rev-parse", first.git["tag"]) == _git(project, "rev-parse", "HEAD")
    committed = _git(project, "ls-tree", "-r", "--name-only", "HEAD").split()
    assert {"dvc.lock", "params.yaml", "metrics/m.json", "plots/p.json"} <= set(committed)
    assert "notes.txt" not in committed
    assert _git(project, "show", "HEAD:dvc.lock") == (project / "dvc.lock").read_text().strip()
    assert "A  notes.txt" in _git(project, "status", "--porcelain")
    # the record: every small file with its sha256, and a copy in the DVC remote
    assert set(first.files) == {"dvc.lock", "dvc.yaml", "params.yaml", "metrics/m.json",
                                "plots/p.json"}  # fmt: skip
    assert first.where == ("local", "remote")
    assert (tmp_path / "remote/cmrops/releases" / first.id / "release.json").is_file()
    # a rerun of the version step on the same state makes no second release
    assert releases.create(project, run_id="again").id == first.id

    second = _run(project, 2)
    assert second.id != first.id
    assert (project / "out/data.bin").read_bytes() != first_bytes
    assert [r.id for r in releases.list_releases(project)] == [first.id, second.id]

    # a machine with neither the cache nor the record of the first release
    shutil.rmtree(project / ".dvc/cache")
    shutil.rmtree(project / releases.REGISTRY)
    (project / "out/data.bin").unlink()
    restored = releases.checkout(project, first.id[:15])  # a unique prefix will do
    assert restored.id == first.id
    assert (project / "out/data.bin").read_bytes() == first_bytes
    assert (project / "metrics/m.json").read_bytes() == first_metrics
    assert (project / "params.yaml").read_text() == "collect:\n  seed: 1\n"
    assert json.loads(versioning.dvc(["status", "--json"], project).stdout or "{}") == {}

    out = subprocess.run(
        [sys.executable, "-m", "cmrops.cli", "release", "list", "--project", str(project)],
        capture_output=True, text=True, env=env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert first.id in out.stdout
    assert second.id in out.stdout


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    project = _project(tmp_path)
    with pytest.raises(releases.ReleaseError, match=r"no dvc\.lock"):
        releases.create(project)
    with pytest.raises(releases.ReleaseError, match="no releases yet"):
        releases.find(project, "latest")
    rel = _run(project, 3)
    with pytest.raises(releases.ReleaseError, match="is not a known release"):
        releases.find(project, "20990101")
    (project / releases.REGISTRY / rel.id / "dvc.lock").write_text("damaged\n")
    with pytest.raises(releases.ReleaseError, match="missing or damaged"):
        releases.find(project, rel.id)
    out = subprocess.run(
        [sys.executable, "-m", "cmrops.cli", "release", "checkout", "nope",
         "--project", str(project)],
        capture_output=True, text=True, env=env(),
    )  # fmt: skip
    assert out.returncode == 2
    assert "is not a known release" in out.stderr
    assert "Traceback" not in out.stderr


def test_tag_mode_leaves_the_branch_where_it_was(tmp_path: Path) -> None:
    project = _project(tmp_path)
    head = _git(project, "rev-parse", "HEAD")
    (project / "params.yaml").write_text("collect:\n  seed: 5\n")
    sh(["dvc", "repro", "-q"], project)
    rel = releases.create(project, params=releases.ReleaseParams(git="tag"))
    assert _git(project, "rev-parse", "HEAD") == head
    assert rel.git is not None
    assert rel.git["branch"] is None
    tagged = _git(project, "show", f"{rel.git['tag']}:dvc.lock")
    assert tagged == (project / "dvc.lock").read_text().strip()


@pytest.mark.slow
def test_the_registry_lives_in_an_s3_remote(tmp_path: Path, moto) -> None:
    """Releases made on one machine are listed and restored on another that has the project
    but neither their records nor their data: only the S3 remote holds them."""
    from cmrops import storage

    storage.ensure_bucket("cmrops-rel", moto.url)
    project = _project(tmp_path, "s3://cmrops-rel/dvc")
    versioning.dvc(["remote", "modify", "--local", "store", "endpointurl", moto.url], project)
    first = _run(project, 7)
    want = (project / "out/data.bin").read_bytes()
    _run(project, 8)

    other = tmp_path / "other"
    shutil.copytree(project, other, ignore=shutil.ignore_patterns(".cmrops", "cache", "out"))
    known = releases.list_releases(other)
    assert [r.where for r in known] == [("remote",), ("remote",)]
    releases.checkout(other, first.id)
    assert (other / "out/data.bin").read_bytes() == want


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch):
    from tests.test_dvc_s3 import Moto

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = Moto()
    server.start()
    monkeypatch.setenv("CMROPS_S3_ENDPOINT_URL", server.url)
    yield server
    server.stop()
