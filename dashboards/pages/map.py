"""Map: every embedded sample as a point of a 2-D layout of its image (or caption) embedding
(UMAP, PCA or t-SNE: cmrops/embedmap.py, computed once per data version and cached), coloured
by label, split, quarantine reason or near-duplicate group; hover for the caption, draw a lasso
or a box to list the samples (previews, table, download) and send them to the Review page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from cmrops.embedmap import METHODS
from dashboards import data, ui

COLOURS = {
    "label": "label (the most confident)",
    "split": "split",
    "quarantine": "quarantine reason",
    "dup_group": "near-duplicate group",
}
METHOD_TEXT = {
    "umap": "UMAP (neighbourhoods; minutes for 100k samples, once)",
    "pca": "PCA (linear; instant)",
    "tsne": "t-SNE (local structure; slow beyond ~20k)",
}
MAX_CATEGORIES = 20  # colours; the rarer values are drawn grey as "other"
BACKGROUND = ("(none)", "kept", "(not in split)", "other")  # drawn grey, under the rest
PREVIEWS = 12
THUMB = 140
SELECTION = "review_selection"  # the Review page's selection (dashboards/pages/review.py)


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


def render(project: Path) -> None:
    st.title("Map")
    absent = data.missing(project, "interim_samples", "features_meta")
    if absent:
        ui.empty_state(project, "embeddings to map", absent, ["preprocess"])
        return
    c = st.columns([2, 2, 1])
    method = c[0].selectbox("Layout", METHODS, format_func=METHOD_TEXT.get, key="map_method")
    colour = c[1].selectbox("Colour by", list(COLOURS), format_func=COLOURS.get, key="map_colour")
    modality = c[2].radio(
        "Embedding",
        ["image", "text"],
        key="map_modality",
        format_func=lambda m: "media" if m == "image" else "captions",
    )
    with st.spinner(f"Computing the {method.upper()} layout (once per data version) ..."):
        m = data.sample_map(project, method, modality)
    frame = data.map_attributes(project, tuple(m.sample_ids)).assign(x=m.xy[:, 0], y=m.xy[:, 1])
    st.caption(
        f"{method.upper()} of {len(frame):,} {data.media_of(project)} samples' "
        f"{'caption' if modality == 'text' else 'media'} embeddings (seed {m.seed}), computed "
        f"in {m.seconds:.1f} s{' and cached' if m.cached else ''}. Quarantined samples are on "
        "the map too (colour by quarantine reason). Hover for a caption; draw a lasso or a box "
        "to list samples; double-click to clear."
    )
    event = st.plotly_chart(
        figure(frame, colour),
        key="map_chart",
        on_select="rerun",
        selection_mode=("lasso", "box", "points"),
        config={"displaylogo": False, "scrollZoom": True},
    )
    rows = selected_rows(event)
    if not rows:
        return
    _selection(project, frame.iloc[rows])


def _selection(project: Path, picked: pd.DataFrame) -> None:
    media = data.media_of(project)
    st.subheader(f"{len(picked)} selected")
    cols = st.columns(6)
    for i, (_, row) in enumerate(picked.head(PREVIEWS).iterrows()):
        p = data.preview(
            project,
            row["sample_id"],
            data.report.media_path(project, row["image_path"]),
            media,
            THUMB,
        )
        ui.preview(cols[i % 6], p, str(row["caption"])[:60], THUMB)
    if len(picked) > PREVIEWS:
        st.caption(f"Previews of the first {PREVIEWS}; all {len(picked)} in the table.")
    table = picked[["sample_id", "caption", "labels", "split", "quarantine", "dup_group", "x", "y"]]
    st.dataframe(table, hide_index=True, key="map_selected")
    ui.download(table, "map-selection", "map_selection_dl")
    if st.button(
        f"Send {len(picked)} to review",
        key="map_send",
        type="primary",
        icon=":material/rate_review:",
    ):
        st.session_state[SELECTION] = list(picked["sample_id"])
        st.session_state["rv_kind"] = "selection"
        st.switch_page("pages/review.py")


ui.render(render)
