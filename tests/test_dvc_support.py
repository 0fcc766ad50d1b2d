"""Helpers shared by the DVC, S3 and DAG tests (no tests here): a throw-away copy of the project
as its own git + DVC repository, tiny params, and output hashing.

Tests never run ``dvc repro``/``dvc push`` against the checkout's own data folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: What the copy needs to run the pipeline (the package itself is imported from the checkout).
#: (``.dvc/plots``: the plot templates and the offline page scripts/bootstrap.sh writes.)
COPY = [
    ".dvc/config", ".dvc/plots", ".dvcignore", "dvc.yaml", "params.yaml", "cmrops", "dags",
    ".gitignore", "withdrawn.jsonl",
]  # fmt: skip
#: Files compared across runs leave out the throughput files: wall-clock timings, run-time data
#: that DVC never sees (git-ignored, neither outs nor metrics).
VOLATILE = {"throughput.json", "train_throughput.json"}


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(DVC_NO_ANALYTICS="1", DVC_IGNORE_ISATTY="true", GIT_TERMINAL_PROMPT="0")
    return e


def sh(
    args: list[str], cwd: Path, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args, cwd=cwd, env=kw.pop("env", env()), capture_output=True, text=True, **kw
    )
    if check and proc.returncode:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def tiny_params(n: int = 80) -> dict[str, Any]:
    """The project's params with a tiny synthetic set; real encoders, embeddings on."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["collect"]["sources"] = [{**p["collect"]["sources"][0], "n": n}]
    # one shard per mapped task (task_rows = shard_size): the DAG tests spread shards over workers
    p["preprocess"].update(shard_size=32, n_workers=2, device="cpu", task_rows=32)
    p["train"].update(bits=[16, 32], epochs=3, hidden=[64], batch_size=32, device="cpu")
    return p


def make_project(dest: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project's pipeline files into ``dest`` as a fresh git repo with one commit."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in COPY:
        src = REPO / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    (dest / "review").mkdir(exist_ok=True)  # the project's review answers: none yet (a dvc dep)
    (dest / "review" / "answers.jsonl").write_bytes(b"")
    if params is not None:
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], dest)
    git_commit(dest, "project copy")
    return dest


def git_commit(repo: Path, msg: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            msg,
        ],
        repo,
    )


def tree_hashes(root: Path, rels: list[str]) -> dict[str, str]:
    """SHA-256 of every file under ``rels`` (relative path -> digest), byte for byte; the
    throughput files (wall-clock timings, run-time data) and resume shards are excluded."""
    out: dict[str, str] = {}
    for rel in rels:
        base = root / rel
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if f.name in VOLATILE or "shards" in f.relative_to(root).parts:
                continue
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def dvc_outs(project: Path) -> list[str]:
    """Every out and metric path declared in the project's dvc.yaml."""
    spec = yaml.safe_load((project / "dvc.yaml").read_text())
    paths: list[str] = []
    for stage in spec["stages"].values():
        for key in ("outs", "metrics", "plots"):
            for item in stage.get(key, []) or []:
                paths.append(next(iter(item)) if isinstance(item, dict) else item)
    return [p for p in paths if (project / p).exists()]


_REPRO: dict[str, Path] = {}


def reproduced_project(base: Path) -> Path:
    """One tiny project reproduced with ``dvc repro`` per test session (shared by modules)."""
    if "p" not in _REPRO:
        project = make_project(base / "repro", tiny_params())
        sh(["dvc", "repro", "--quiet"], project, timeout=1800)
        git_commit(project, "dvc repro")
        _REPRO["p"] = project
    return _REPRO["p"]
