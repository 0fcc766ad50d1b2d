"""Search: type a caption (or pick a query image, video or clip) and see the top-k of the other
modality from the trained codes, with thumbnails, keyframe strips or audio players, Hamming
distances and relevance (logic: cmrops/search.py)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from cmrops.search import SearchError, SearchHit, SearchResult, search_caption, search_image
from dashboards import data, ui

COLUMNS = 5  # result cards per row
FLOAT_METHOD = "aligned-float"  # the aligned float baseline (cmrops.align.baseline.NAME)
MODES = ("caption", "image")  # by a typed caption, by a stored query item ("image" side)
MARKS = {
    True: ":green[:material/check_circle: relevant]",
    False: ":red[:material/cancel: not relevant]",
    None: ":grey[:material/help: relevance unknown]",
}


def _mode_label(mode: str, media: str) -> str:
    return (
        f"Caption → {ui.ITEMS[media]}"
        if mode == "caption"
        else f"Query {ui.ITEM[media]} → captions"
    )


def render(project: Path) -> None:
    st.title("Search")
    media = data.media_of(project)
    item, items = ui.ITEM[media], ui.ITEMS[media]
    st.caption(
        "Exact Hamming kNN over the trained codes (cmrops.HammingIndex). A caption goes through "
        f"the run's text encoder and the model's text head and searches the database {items}; a "
        f"query {item}'s stored code searches the database captions. Relevant = shares a label "
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
        "Query by",
        MODES,
        format_func=lambda m: _mode_label(m, media),
        horizontal=True,
        key="search_mode",
    )
    try:
        catalog = data.search_catalog(str(project))
        if mode == "caption":
            result = _caption_query(str(project), info.name, k, items)
        else:
            result = _item_query(str(project), info.name, k, catalog.query_ids)
    except SearchError as e:
        st.error(str(e))
        return
    if result is not None:
        _results(project, result)


def _caption_query(project: str, name: str, k: int, items: str) -> SearchResult | None:
    caption = st.text_input(
        "Caption",
        key="search_caption",
        placeholder="e.g. a red circle and a blue star - then press Enter",
    )
    if not caption or not caption.strip():
        st.caption(f"Type a caption and press Enter to search the database {items}.")
        return None
    codes = data.search_codes(project, name)
    with st.spinner("Loading the text encoder and the model (once) ..."):
        encoder = data.search_caption_encoder(project, name)
    return search_caption(codes, encoder, data.search_catalog(project), caption, k)


def _item_query(project: str, name: str, k: int, query_ids: tuple[str, ...]) -> SearchResult:
    catalog = data.search_catalog(project)

    def label(sid: str) -> str:
        text = catalog.caption_of(sid)
        return f"{sid} - {text[:60]}{'…' if len(text) > 60 else ''}"

    sid = st.selectbox(
        f"Query {ui.ITEM[catalog.media]} (held-out query set)",
        query_ids,
        format_func=label,
        key="search_image",
    )
    shown = data.preview(
        Path(project), sid, _path(catalog.image_paths.get(sid)), catalog.media, 200
    )
    cols = st.columns([1, 4] if catalog.media == "image" else [2, 3])
    ui.preview(cols[0], shown, f"query {sid}", 200)
    labels = catalog.labels.get(sid)
    cols[1].markdown(f"**Query caption** (not used by the search): {catalog.caption_of(sid)}")
    cols[1].caption("labels: " + (", ".join(sorted(labels)) if labels else "none"))
    return search_image(data.search_codes(project, name), catalog, sid, k)


def _results(project: Path, result: SearchResult) -> None:
    target = ui.ITEMS[result.media] if result.direction == "text_to_image" else "captions"
    relevant = result.n_relevant
    tally = "" if relevant is None else f" · **{relevant} of {len(result.hits)}** relevant"
    st.markdown(
        f"**{len(result.hits)}** nearest database {target} · model **{result.model}** "
        f"({ui.direction(result.direction_name)}){tally}"
    )
    st.caption(f"Relevance: {result.relevance}")
    for start in range(0, len(result.hits), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, hit in zip(cols, result.hits[start : start + COLUMNS], strict=False):
            with col:
                _card(project, hit, result.media)


def _card(project: Path, hit: SearchHit, media: str) -> None:
    with st.container(key=f"search_hit_{hit.rank}", border=True):
        st.markdown(f"**#{hit.rank}** · {hit.score}")
        shown = data.preview(project, hit.sample_id, _path(hit.image_path), media, 160)
        ui.preview(st, shown, width="stretch")
        st.markdown(MARKS[hit.relevant])
        st.write(hit.caption)
        st.caption(f"{hit.sample_id} · " + (", ".join(sorted(hit.labels)) or "no labels"))


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)


ui.render(render)
