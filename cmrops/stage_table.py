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

__all__ = ["DIGEST_DIR", "PLOTS_DIR", "STAGES", "Stage", "argv", "stage_names"]


@dataclass(frozen=True)
class Stage:
    name: str
    args: tuple[str, ...]  # after "cmrops <name> --params P"
    inputs: tuple[str, ...]  # folders/files read (relative to the work folder)
    outputs: tuple[str, ...]  # folders/files written
    gpu: bool = False


#: Where every stage's DVC metrics file (its numbers-only digest, :mod:`cmrops.digest`) goes.
DIGEST_DIR = "metrics/dvc"
#: The folder of the DVC plot files (evaluate's curves, the quarantine counts).
PLOTS_DIR = "plots"


def _dvc(name: str, plots: bool = False) -> tuple[str, ...]:
    """The arguments naming what DVC sees of stage ``name``: its digest (and plot folder)."""
    return ("--digest", f"{DIGEST_DIR}/{name}.json", *(("--plots", PLOTS_DIR) if plots else ()))


def _dvc_outputs(name: str, plots: bool = False) -> tuple[str, ...]:
    quarantine = (f"{PLOTS_DIR}/quarantine/{name}.json",) if plots else ()
    return (f"{DIGEST_DIR}/{name}.json", *quarantine)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "collect",
            ("--out", "data/raw", *_dvc("collect", plots=True)),
            (),
            ("data/raw", *_dvc_outputs("collect", plots=True)),
        ),
        Stage(
            "preprocess",
            ("--raw", "data/raw", "--out", "data/interim", *_dvc("preprocess", plots=True)),
            ("data/raw",),
            ("data/interim", *_dvc_outputs("preprocess", plots=True)),
        ),
        Stage(
            "align",
            (
                "--interim", "data/interim", "--raw", "data/raw", "--out", "data/align",
                *_dvc("align"),
            ),
            ("data/interim", "data/raw"),
            ("data/align", *_dvc_outputs("align")),
        ),
        Stage(
            "label",
            (
                "--interim", "data/interim", "--align", "data/align", "--out", "data/labelled",
                "--review-log", "review/answers.jsonl", *_dvc("label"),
            ),
            ("data/interim", "data/align", "review/answers.jsonl"),
            ("data/labelled", *_dvc_outputs("label")),
        ),
        Stage(
            "clean",
            (
                "--interim", "data/interim", "--align", "data/align", "--labelled",
                "data/labelled", "--raw", "data/raw", "--out", "data/clean",
                "--metrics", "metrics/quality.json", "--review-log", "review/answers.jsonl",
                *_dvc("clean", plots=True),
            ),
            ("data/interim", "data/align", "data/labelled", "data/raw", "review/answers.jsonl"),
            ("data/clean", "metrics/quality.json", *_dvc_outputs("clean", plots=True)),
        ),
        Stage(
            "split",
            (
                "--clean", "data/clean", "--labelled", "data/labelled",
                "--out", "data/split", "--metrics", "metrics/split.json", *_dvc("split"),
            ),
            ("data/clean", "data/labelled"),
            ("data/split", "metrics/split.json", *_dvc_outputs("split")),
        ),
        Stage(
            "train",
            (
                "--split", "data/split", "--clean", "data/clean", "--interim", "data/interim",
                "--labelled", "data/labelled", "--raw", "data/raw", "--models", "models",
                "--codes", "data/codes", "--metrics", "metrics/train.json", *_dvc("train"),
            ),
            ("data/split", "data/clean", "data/interim", "data/labelled", "data/raw"),
            # not metrics/train_throughput.json: wall-clock run-time data, never versioned
            ("models", "data/codes", "metrics/train.json", *_dvc_outputs("train")),
            gpu=True,
        ),
        Stage(
            "evaluate",
            (
                "--codes", "data/codes", "--labelled", "data/labelled", "--split", "data/split",
                "--metrics", "metrics/retrieval.json", "--plots", "plots",
                "--train-metrics", "metrics/train.json", *_dvc("evaluate"),
            ),
            ("data/codes", "data/labelled", "data/split", "metrics/train.json"),
            # its curves per model (pr/, pk/) and the tables dvc.yaml's plots draw (retrieval/)
            (
                "metrics/retrieval.json", f"{PLOTS_DIR}/pr", f"{PLOTS_DIR}/pk",
                f"{PLOTS_DIR}/retrieval", *_dvc_outputs("evaluate"),
            ),
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
