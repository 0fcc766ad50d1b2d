"""The pipeline's stages as data: their ``cmrops`` command line, inputs and outputs.

One table, in the lowest layer, serves every shell: ``dvc.yaml``'s ``cmd`` of each stage is
``cmrops`` + :func:`argv` (a test checks it), the DAG's tasks run the same argv
(:func:`cmrops.pipeline.run_stage`), the CLI records every stage command it runs, and telemetry
finds each stage's metrics file here. It imports nothing of the package.

Paths are relative to a *work folder* (the project root, where ``dvc.yaml`` lives).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STAGES", "Stage", "argv", "stage_names"]


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]  # after "cmrops <name> --params P"
    inputs: tuple[str, ...]  # folders/files read (relative to the work folder)
    outputs: tuple[str, ...]  # folders/files written
    gpu: bool = False


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("collect", ("--out", "data/raw"), (), ("data/raw",)),
        Stage(
            "preprocess",
            ("--raw", "data/raw", "--out", "data/interim"),
            ("data/raw",),
            ("data/interim",),
        ),
        Stage(
            "align",
            ("--interim", "data/interim", "--raw", "data/raw", "--out", "data/align"),
            ("data/interim", "data/raw"),
            ("data/align",),
        ),
        Stage(
            "label",
            ("--interim", "data/interim", "--align", "data/align", "--out", "data/labelled",
             "--review-log", "review/answers.jsonl"),
            ("data/interim", "data/align", "review/answers.jsonl"),
            ("data/labelled",),
        ),
        Stage(
            "clean",
            (
                "--interim", "data/interim", "--align", "data/align", "--labelled",
                "data/labelled", "--raw", "data/raw", "--out", "data/clean",
                "--metrics", "metrics/quality.json", "--review-log", "review/answers.jsonl",
            ),
            ("data/interim", "data/align", "data/labelled", "data/raw", "review/answers.jsonl"),
            ("data/clean", "metrics/quality.json"),
        ),
        Stage(
            "split",
            (
                "--clean", "data/clean", "--labelled", "data/labelled",
                "--out", "data/split", "--metrics", "metrics/split.json",
            ),
            ("data/clean", "data/labelled"),
            ("data/split", "metrics/split.json"),
        ),
        Stage(
            "train",
            (
                "--split", "data/split", "--clean", "data/clean", "--interim", "data/interim",
                "--labelled", "data/labelled", "--raw", "data/raw", "--models", "models",
                "--codes", "data/codes", "--metrics", "metrics/train.json",
            ),
            ("data/split", "data/clean", "data/interim", "data/labelled", "data/raw"),
            ("models", "data/codes", "metrics/train.json", "metrics/train_throughput.json"),
            gpu=True,
        ),
        Stage(
            "evaluate",
            (
                "--codes", "data/codes", "--labelled", "data/labelled", "--split", "data/split",
                "--metrics", "metrics/retrieval.json", "--plots", "plots",
                "--train-metrics", "metrics/train.json",
            ),
            ("data/codes", "data/labelled", "data/split", "metrics/train.json"),
            ("metrics/retrieval.json", "plots"),
        ),
    )
}  # fmt: skip


def stage_names() -> list[str]:
    return list(STAGES)


def argv(name: str, params_file: str = "params.yaml", root: str | None = None) -> list[str]:
    """``cmrops`` arguments of stage ``name``; paths prefixed with ``root`` when given."""
    st = STAGES[name]
    args = list(st.args)
    if root is not None:
        args = [a if a.startswith("--") else str(Path(root) / a) for a in args]
    return [name, "--params", params_file, *args]
