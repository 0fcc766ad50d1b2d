"""Search: type a caption (or pick a query image) and see the top-k of the other modality from the
trained codes, with thumbnails, Hamming distances and relevance (logic: cmrops/search.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cmrops.search import SearchError, SearchHit, SearchResult, search_caption, search_image
from dashboards import data, ui

COLUMNS = 5  # result cards per row
FLOAT_METHOD = "aligned-float"  # the aligned float baseline (cmrops.align.baseline.NAME)
MODES = {"caption": "Caption → images", "image": "Query image → captions"}
MARKS = {
    True: ":green[:material/check_circle: relevant]",
    False: ":red[:material/cancel: not relevant]",
    None: ":grey[:material/help: relevance unknown]",
}


def render(project: Path) -> None:
    st.title("Search")
    st.caption(
        "Exact Hamming kNN over the trained codes (cmrops.HammingIndex). A caption goes through "
        "the run's text encoder and the model's text head and searches the database images; a "
        "query image's stored code searches the database captions. Relevant = shares a label "
        "with the query (a caption's labels: the vocabulary terms it names). Method "
        "aligned-float is the float baseline: cosine similarity in the shared space of the "
        "alignment fitted on the training pairs, the reference the codes are measured against."
    )
    models = data.search_models(str(project))
    if not models:
        ui.empty_state(project, "trained codes to search", ["data/codes/<method>-<bits>/"],
                       ["train"])  # fmt: skip
        return

    # hashing methods first (the default is a model with codes), the float baseline last
    methods = sorted({m.method for m in models}, key=lambda x: (x == FLOAT_METHOD, x))
    left, mid, right = st.columns([2, 2, 3])
    method = left.selectbox("Method", methods, key="search_method")
    bits_options = [m.bits for m in models if m.method == method]
    bits = mid.selectbox(
        "Bits",
        bits_options,
        format_func=lambda b: "float (cosine)" if b == 0 else str(b),
        key="search_bits",
    )
    info = next(m for m in models if m.method == method and m.bits == bits)
    k_max = min(50, info.n_database)
    k = right.slider("Results (k)", 1, k_max, min(10, k_max), key="search_k")
    mode = st.radio(
        "Query by", list(MODES), format_func=MODES.get, horizontal=True, key="search_mode"
    )
    try:
        catalog = data.search_catalog(str(project))
        if mode == "caption":
            result = _caption_query(str(project), info.name, k)
        else:
            result = _image_query(str(project), info.name, k, catalog.query_ids)
    except SearchError as e:
        st.error(str(e))
        return
    if result is not None:
        _results(str(project), result)


def _caption_query(project: str, name: str, k: int) -> SearchResult | None:
    caption = st.text_input(
        "Caption",
        key="search_caption",
        placeholder="e.g. a red circle and a blue star - then press Enter",
    )
    if not caption or not caption.strip():
        st.caption("Type a caption and press Enter to search the database images.")
        return None
    codes = data.search_codes(project, name)
    with st.spinner("Loading the text encoder and the model (once) ..."):
        encoder = data.search_caption_encoder(project, name)
    return search_caption(codes, encoder, data.search_catalog(project), caption, k)


def _image_query(project: str, name: str, k: int, query_ids: tuple[str, ...]) -> SearchResult:
    catalog = data.search_catalog(project)

    def label(sid: str) -> str:
        text = catalog.caption_of(sid)
        return f"{sid} - {text[:60]}{'…' if len(text) > 60 else ''}"

    sid = st.selectbox(
        "Query image (held-out query set)", query_ids, format_func=label, key="search_image"
    )
    thumb = data.thumbnail(_path(catalog.image_paths.get(sid)), 200)
    cols = st.columns([1, 4])
    if thumb.data is not None:
        cols[0].image(thumb.data, caption=f"query {sid}")
    else:
        cols[0].caption(thumb.error or "no image")
    labels = catalog.labels.get(sid)
    cols[1].markdown(f"**Query caption** (not used by the search): {catalog.caption_of(sid)}")
    cols[1].caption("labels: " + (", ".join(sorted(labels)) if labels else "none"))
    return search_image(data.search_codes(project, name), catalog, sid, k)


def _results(project: str, result: SearchResult) -> None:
    target = "images" if result.direction == "text_to_image" else "captions"
    relevant = result.n_relevant
    tally = "" if relevant is None else f" · **{relevant} of {len(result.hits)}** relevant"
    st.markdown(
        f"**{len(result.hits)}** nearest database {target} · model **{result.model}** "
        f"({result.direction.replace('_', ' ')}){tally}"
    )
    st.caption(f"Relevance: {result.relevance}")
    for start in range(0, len(result.hits), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, hit in zip(cols, result.hits[start : start + COLUMNS], strict=False):
            with col:
                _card(project, hit)


def _card(project: str, hit: SearchHit) -> None:
    with st.container(key=f"search_hit_{hit.rank}", border=True):
        st.markdown(f"**#{hit.rank}** · {hit.score}")
        thumb = data.thumbnail(_path(hit.image_path), 160)
        if thumb.data is not None:
            st.image(thumb.data, width="stretch")
        else:
            st.caption(thumb.error or "no image")
        st.markdown(MARKS[hit.relevant])
        st.write(hit.caption)
        st.caption(f"{hit.sample_id} · " + (", ".join(sorted(hit.labels)) or "no labels"))


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


ui.render(render)
