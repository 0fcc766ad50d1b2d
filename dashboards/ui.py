"""Small rendering helpers shared by the pages: the empty state, the error guard, number text."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import data

#: What to run, per stage, shown in empty states (the README's commands).
COMMANDS: dict[str, str] = {
    "collect": "cmrops collect --params params.yaml --out data/raw",
    "preprocess": "cmrops preprocess --params params.yaml --raw data/raw --out data/interim",
    "label": "cmrops label --params params.yaml --interim data/interim --out data/labelled",
    "clean": "cmrops clean --params params.yaml --interim data/interim --labelled data/labelled "
    "--raw data/raw --out data/clean",
    "split": "cmrops split --params params.yaml --clean data/clean --labelled data/labelled "
    "--out data/split",
    "train": "cmrops train --params params.yaml --split data/split --clean data/clean "
    "--interim data/interim --labelled data/labelled --models models --codes data/codes "
    "--metrics metrics/train.json",
    "evaluate": "cmrops evaluate --params params.yaml --codes data/codes --labelled "
    "data/labelled --split data/split --metrics metrics/retrieval.json --plots plots",
}


def empty_state(project: Path, what: str, absent: list[str], stages: list[str]) -> None:
    """Say that ``what`` is not there yet, which files are missing, and what to run."""
    lines = [
        f"**No {what} yet** in `{project}` (missing: {', '.join(f'`{a}`' for a in absent)}).",
        "",
        "Run `make run` (the whole pipeline on the built-in synthetic set) or `dvc repro`, "
        "or the missing stage(s) from the project folder:",
    ]
    st.info("\n".join(lines), icon=":material/hourglass_empty:")
    st.code("\n".join(COMMANDS[s] for s in stages), language="bash")


def render(page: Callable[[Path], None]) -> None:
    """Run a page's ``render(project)``; an unreadable output becomes an error box saying what
    to rerun, not a traceback."""
    project = data.project_dir()
    try:
        page(project)
    except data.ReportError as e:
        st.error(str(e), icon=":material/error:")


def num(value: Any, digits: int = 4) -> str:
    """Metric text: integers as they are, floats rounded, missing as an em dash."""
    if value is None or value is pd.NA or (isinstance(value, numbers.Real) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.{digits}f}"
    return str(value)
