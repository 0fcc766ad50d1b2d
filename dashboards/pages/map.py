"""Map: every embedded sample as a point of a 2-D layout of its image (or caption) embedding
(UMAP, PCA or t-SNE: cmrops/embedmap.py, computed once per data version and cached), coloured
by label, split, quarantine reason or near-duplicate group; hover for the caption, draw a lasso
or a box to list the samples (previews, table, download) and send them to the Review page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from cmrops.embedmap import METHODS
from dashboards import data, ui
from dashboards.mapplot import COLOURS, figure, selected_rows

METHOD_TEXT = {
    "umap": "UMAP (neighbourhoods; minutes for 100k samples, once)",
    "pca": "PCA (linear; instant)",
    "tsne": "t-SNE (local structure; slow beyond ~20k)",
}
PREVIEWS = 12
THUMB = 140
SELECTION = "review_selection"  # the Review page's selection (dashboards/pages/review.py)


def render(project: Path) -> None:
    st.title("Map")
    absent = data.missing(project, "interim_samples", "features_meta")
    if absent:
        ui.empty_state(project, "embeddings to map", absent, ["preprocess"])
        return
    c = st.columns([2, 2, 1])
    modality = st.session_state.get("map_modality", "image")
    # open on UMAP when this data version's UMAP is there; else on PCA (instant), not on a
    # first UMAP that may take minutes
    default = "umap" if data.map_cached(project, "umap", modality) else "pca"
    method = c[0].selectbox(
        "Layout",
        METHODS,
        index=METHODS.index(default),
        format_func=METHOD_TEXT.get,
        key="map_method",
    )
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
