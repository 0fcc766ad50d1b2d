"""Small rendering helpers shared by the pages: the empty state, the error guard, number text,
media words and a sample's preview (a picture or a player)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from dashboards import data

#: What to run, per stage, shown in empty states (the commands of docs/stages/index.md).
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
    view = data.shown_view()
    if not view.workspace and view.release is not None:
        lines = [
            lines[0],
            "",
            f"Release {view.release.id} is not the workspace: its tables come from the local "
            "DVC cache. Bring them with:",
        ]
        st.info("\n".join(lines), icon=":material/hourglass_empty:")
        st.code(f"cmrops release checkout {view.release.id}", language="bash")
        return
    st.info("\n".join(lines), icon=":material/hourglass_empty:")
    st.code("\n".join(COMMANDS[s] for s in stages), language="bash")


def render(page: Callable[[Path], None]) -> None:
    """Run a page's ``render(project)``; an unreadable output becomes an error box saying what
    to rerun, not a traceback."""
    try:
        project = data.shown_dir()
        page(project)
    except data.PAGE_ERRORS as e:
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


#: What the UI calls one and several items of each media (``cmrops.report.media_of``).
ITEM: dict[str, str] = {"image": "image", "video": "video", "audio": "clip"}
ITEMS: dict[str, str] = {"image": "images", "video": "videos", "audio": "clips"}


def direction(name: str) -> str:
    """A retrieval direction as shown: ``text_to_video`` -> ``text → video``."""
    return name.replace("_to_", " → ").replace("_", " ")


def preview(slot: Any, p: data.Preview, caption: str | None = None, width: int | str = 160) -> None:
    """Show one sample's :class:`~cmrops.report.Preview` in ``slot``: an image's thumbnail at
    ``width`` (pixels or ``"stretch"``), a video's keyframe strip across the slot, a player for
    an audio clip - or, when there is none, its error as a warning (a corrupt or undecodable
    sample shows its evidence, it is never decoded again)."""
    if p.data is None:
        text = f"{caption}: {p.error}" if caption else str(p.error)
        slot.warning(text, icon=":material/broken_image:")
    elif p.is_audio:
        slot.audio(p.data, format=p.mime)
        if caption:
            slot.caption(caption)
    else:
        slot.image(p.data, caption=caption, width=width if p.media == "image" else "stretch")


def download(df: pd.DataFrame, name: str, key: str, slot: Any = None) -> None:
    """CSV and Parquet download buttons for ``df`` (``name`` without extension)."""
    slot = slot or st
    c = slot.columns([1, 1, 4])
    c[0].download_button("CSV", data.table_bytes(df, "csv"), f"{name}.csv", "text/csv",
                         key=f"{key}_csv", icon=":material/download:")  # fmt: skip
    c[1].download_button("Parquet", data.table_bytes(df, "parquet"), f"{name}.parquet",
                         "application/vnd.apache.parquet", key=f"{key}_parquet",
                         icon=":material/download:")  # fmt: skip


def drill(
    project: Path,
    counts: pd.DataFrame,
    key: str,
    target: Callable[[pd.Series], tuple[str, Any] | None],
    what: str = "samples",
    **table: Any,
) -> None:
    """A count table whose rows open the samples behind them: pick a row (click its left
    edge) and the samples are listed below it, with CSV / Parquet downloads."""
    event = st.dataframe(counts, hide_index=True, key=key, on_select="rerun",
                         selection_mode="single-row", **table)  # fmt: skip
    rows = event.selection.rows if event is not None else []
    if not rows:
        st.caption(f"Select a row to list its {what}.")
        return
    row = counts.iloc[rows[0]]
    picked = target(row)
    if picked is None:
        return
    found = data.drill(project, *picked)
    name = " / ".join(str(v) for v in row.to_numpy()[:2])
    st.markdown(f"**{len(found)}** {what} — {name}")
    st.dataframe(found, hide_index=True, key=f"{key}_samples")
    slug = "-".join(str(v) for v in (picked[1] if isinstance(picked[1], tuple) else (picked[1],)))
    download(found, f"{picked[0]}-{slug}", f"{key}_dl")
