"""The Map page's figure: one WebGL scatter trace per colour value, every point carrying its row
so a lasso or box selection maps back to samples (no Streamlit here: the page renders it)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

COLOURS = {
    "label": "label (the most confident)",
    "split": "split",
    "quarantine": "quarantine reason",
    "dup_group": "near-duplicate group",
}
MAX_CATEGORIES = 20  # colours; the rarer values are drawn grey as "other"
BACKGROUND = ("(none)", "kept", "(not in split)", "other")  # drawn grey, under the rest


def _palette() -> list[str]:
    import plotly.colors

    return list(plotly.colors.qualitative.Dark24)


def _marker_size(n: int) -> float:
    return 7.0 if n <= 2_000 else 4.0 if n <= 20_000 else 2.5


def figure(frame: pd.DataFrame, colour: str) -> go.Figure:
    """One Scattergl trace per value of ``colour`` (the :data:`MAX_CATEGORIES` commonest, the
    rest as "other"); each point's customdata is its row in ``frame``."""
    values = frame[colour].astype(str)
    top = [v for v in values.value_counts().index if v not in BACKGROUND][:MAX_CATEGORIES]
    values = values.where(values.isin(top) | values.isin(BACKGROUND), "other")
    palette = _palette()
    fig = go.Figure()
    size = _marker_size(len(frame))
    hover = frame["caption"].fillna("").astype(str).str.slice(0, 60)
    groups = [v for v in BACKGROUND if (values == v).any()] + top
    for i, value in enumerate(groups):
        rows = np.flatnonzero((values == value).to_numpy())
        grey = value in BACKGROUND
        fig.add_trace(
            go.Scattergl(
                x=frame["x"].to_numpy()[rows],
                y=frame["y"].to_numpy()[rows],
                mode="markers",
                name=f"{value} ({len(rows)})",
                customdata=np.column_stack([rows, frame["sample_id"].to_numpy()[rows]]),
                hovertext=hover.to_numpy()[rows],
                hovertemplate="%{customdata[1]}<br>%{hovertext}<extra>%{fullData.name}</extra>",
                marker={
                    "size": size,
                    "color": "#b8b8b8" if grey else palette[i % len(palette)],
                    "opacity": 0.45 if grey else 0.8,
                },
            )
        )
    fig.update_layout(
        height=640,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        dragmode="lasso",
        legend={"title": {"text": COLOURS[colour]}, "itemsizing": "constant"},
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
        uirevision=colour,  # keep zoom across reruns
    )
    return fig


def selected_rows(event: Any) -> list[int]:
    """Rows of the map frame under the lasso / box (from each point's customdata)."""
    if event is None:
        return []
    try:
        points = event.selection.points
    except AttributeError:
        points = (event.get("selection") or {}).get("points") or []
    rows = []
    for p in points:
        custom = p.get("customdata") if isinstance(p, dict) else None
        if custom:
            rows.append(int(custom[0]))
    return sorted(set(rows))
