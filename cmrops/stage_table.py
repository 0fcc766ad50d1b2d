"""The pipeline's stages as data: their ``cmrops`` command line, inputs and outputs.

One table, in the lowest layer, serves every shell: ``dvc.yaml``'s ``cmd`` of each stage is
``cmrops`` + :func:`argv` (a test checks it), the CLI builds each stage's command from it
(:func:`add_parser`: options, help, the handler it runs), the DAG's tasks run the same argv
in-process through the same parser (:func:`cmrops.pipeline.run_stage`, via
:mod:`cmrops.stage_command`), and telemetry finds each stage's metrics file here. It imports
nothing of the package.

Paths are relative to a *work folder* (the project root, where ``dvc.yaml`` lives).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DIGEST_DIR",
    "PLOTS_DIR",
    "STAGES",
    "Option",
    "Stage",
    "add_parser",
    "argv",
    "build_parser",
    "stage_names",
]


@dataclass(frozen=True)
class Option:
    """One option of a stage command: ``flag``, the ``value`` dvc.yaml and the DAG pass (None:
    not passed), and its help. On the command line its default is that value, or nothing when
    ``optional`` (the stage then does without it) or a ``switch`` (a flag without a value)."""

    flag: str
    value: str | None
    help: str
    optional: bool = False
    switch: bool = False

    @property
    def default(self) -> str | None:
        return None if self.optional or self.switch else self.value


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    handler: str  # "module:function" that runs the command (given the parsed arguments)
    options: tuple[Option, ...]  # after "cmrops <name> --params P", in dvc.yaml's order
    inputs: tuple[str, ...]  # folders/files read (relative to the work folder)
    outputs: tuple[str, ...]  # folders/files written
    gpu: bool = False

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments after ``cmrops <name> --params P`` in dvc.yaml and the DAG."""
        return tuple(x for o in self.options if o.value is not None for x in (o.flag, o.value))


_RAW = "collect's output folder"
_INTERIM = "preprocess's output folder"
_ALIGN = "align's output folder"
_LABELLED = "label's output folder"
_CLEAN = "clean's output folder"
_SPLIT = "split's output folder"
_TRUTH = "collect's folder (synthetic truth)"

#: Where every stage's DVC metrics file (its numbers-only digest, :mod:`cmrops.digest`) goes.
DIGEST_DIR = "metrics/dvc"
#: The folder of the DVC plot files (evaluate's curves, the quarantine counts).
PLOTS_DIR = "plots"
#: The project's review answer log (:data:`cmrops.answers.DEFAULT_PATH`; a test keeps them equal).
REVIEW_LOG = "review/answers.jsonl"

_REVIEW = Option(
    "--review-log", REVIEW_LOG,
    "the project's review answers, merged when there (dashboard Review page)",
)  # fmt: skip
_PLOTS = Option("--plots", PLOTS_DIR, "folder of the DVC plot files", optional=True)


def _dvc(name: str, plots: bool = False) -> tuple[Option, ...]:
    """The options naming what DVC sees of stage ``name``: its digest (and plot folder)."""
    digest = Option(
        "--digest", f"{DIGEST_DIR}/{name}.json",
        "write the numbers-only DVC metrics file here", optional=True,
    )  # fmt: skip
    return (digest, *((_PLOTS,) if plots else ()))


def _dvc_outputs(name: str, plots: bool = False) -> tuple[str, ...]:
    quarantine = (f"{PLOTS_DIR}/quarantine/{name}.json",) if plots else ()
    return (f"{DIGEST_DIR}/{name}.json", *quarantine)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "collect", "gather image-text pairs from the sources in params",
            "cmrops.stages.collect:cli_main",
            (Option("--out", "data/raw", "output folder (data/raw)"), *_dvc("collect", plots=True)),
            (), ("data/raw", *_dvc_outputs("collect", plots=True)),
        ),
        Stage(
            "preprocess", "decode, hash, normalise and embed collected samples",
            "cmrops.stages.preprocess:cli_main",
            (
                Option("--raw", "data/raw", _RAW),
                Option("--out", "data/interim", "output folder (data/interim)"),
                *_dvc("preprocess", plots=True),
            ),
            ("data/raw",), ("data/interim", *_dvc_outputs("preprocess", plots=True)),
        ),
        Stage(
            "align", "a shared image-text space: learned heads or the encoder's",
            "cmrops.stages.align:cli_main",
            (
                Option("--interim", "data/interim", _INTERIM),
                Option("--raw", "data/raw", _TRUTH),
                Option("--out", "data/align", "output folder (data/align)"),
                *_dvc("align"),
            ),
            ("data/interim", "data/raw"), ("data/align", *_dvc_outputs("align")),
        ),
        Stage(
            "label", "label samples: source, keywords, zero-shot, manual",
            "cmrops.stages.label:cli_main",
            (
                Option("--interim", "data/interim", _INTERIM),
                Option("--align", "data/align", _ALIGN),
                Option("--out", "data/labelled", "output folder (data/labelled)"),
                _REVIEW,
                *_dvc("label"),
            ),
            ("data/interim", "data/align", REVIEW_LOG), ("data/labelled", *_dvc_outputs("label")),
        ),
        Stage(
            "clean", "drop duplicates, broken pairs and off-topic samples",
            "cmrops.stages.clean:cli_main",
            (
                Option("--interim", "data/interim", _INTERIM),
                Option("--align", "data/align", _ALIGN),
                Option("--labelled", "data/labelled", _LABELLED),
                Option("--raw", "data/raw", _TRUTH),
                Option("--out", "data/clean", "output folder (data/clean)"),
                Option("--metrics", "metrics/quality.json", "metrics file"),
                _REVIEW,
                *_dvc("clean", plots=True),
            ),
            ("data/interim", "data/align", "data/labelled", "data/raw", REVIEW_LOG),
            ("data/clean", "metrics/quality.json", *_dvc_outputs("clean", plots=True)),
        ),
        Stage(
            "split", "group-aware stratified splits with a leakage audit",
            "cmrops.stages.split:cli_main",
            (
                Option("--clean", "data/clean", _CLEAN),
                Option("--labelled", "data/labelled", _LABELLED),
                Option("--out", "data/split", "output folder (data/split)"),
                Option("--metrics", "metrics/split.json", "metrics file"),
                *_dvc("split"),
            ),
            ("data/clean", "data/labelled"),
            ("data/split", "metrics/split.json", *_dvc_outputs("split")),
        ),
        Stage(
            "train", "train cross-modal hashing models and write their codes",
            "cmrops.stages.train:cli_main",
            (
                Option("--split", "data/split", _SPLIT),
                Option("--clean", "data/clean", _CLEAN),
                Option("--interim", "data/interim", _INTERIM),
                Option("--labelled", "data/labelled", _LABELLED),
                Option("--raw", "data/raw", "collect's output folder: images for finetune_encoder",
                       optional=True),
                Option("--models", "models", "checkpoint folders (models)"),
                Option("--codes", "data/codes", "output folder (data/codes)"),
                Option("--metrics", "metrics/train.json", "metrics file"),
                *_dvc("train"),
                Option("--restart", None, "discard existing checkpoints, train from scratch",
                       switch=True),
            ),
            ("data/split", "data/clean", "data/interim", "data/labelled", "data/raw"),
            # not metrics/train_throughput.json: wall-clock run-time data, never versioned
            ("models", "data/codes", "metrics/train.json", *_dvc_outputs("train")),
            gpu=True,
        ),
        Stage(
            "evaluate", "retrieval metrics of the trained hashing models",
            "cmrops.stages.evaluate:cli_main",
            (
                Option("--codes", "data/codes", "train's codes folder"),
                Option("--labelled", "data/labelled", _LABELLED),
                Option("--split", "data/split", _SPLIT),
                Option("--metrics", "metrics/retrieval.json", "metrics file"),
                Option("--plots", PLOTS_DIR, "folder of the DVC plot files"),
                Option("--train-metrics", "metrics/train.json",
                       "train's metrics JSON (val_from, protocol card)", optional=True),
                *_dvc("evaluate"),
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


def add_parser(subparsers: Any, stage: Stage) -> argparse.ArgumentParser:
    """Add the command of ``stage`` to ``subparsers`` (what ``add_subparsers`` returned): its
    options with their defaults and help, and ``handler`` set to the stage's entry point."""
    p = subparsers.add_parser(stage.name, help=stage.help)
    p.add_argument("--params", default="params.yaml")
    for o in stage.options:
        if o.switch:
            p.add_argument(o.flag, action="store_true", help=o.help)
        else:
            p.add_argument(o.flag, default=o.default, help=o.help)
    p.set_defaults(handler=stage.handler)
    return p


def build_parser(prog: str = "cmrops") -> argparse.ArgumentParser:
    """A parser of the stage commands alone (``cmrops <stage> ...``), as the CLI parses them."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        add_parser(sub, stage)
    return p
