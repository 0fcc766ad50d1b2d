"""Search: type a caption (or pick a query image, video or clip) and see the top-k of the other
modality from the trained codes, with thumbnails, keyframe strips or audio players, Hamming
distances and relevance (logic: cmrops/search.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from cmrops.search import (
    RULES,
    ModelInfo,
    SearchError,
    SearchHit,
    SearchResult,
    search_caption,
    search_image,
)
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
        f"query {item}'s stored code searches the database captions. A caption's labels are "
        "the vocabulary terms it names; a query item's are its stored labels. Method "
        "aligned-float is the float baseline: cosine similarity in the shared space of the "
        "alignment fitted on the training pairs, the reference the codes are measured against."
    )
    models = data.search_models(str(project))
    if not models:
        ui.empty_state(project, "trained codes to search", ["data/codes/<method>-<bits>/"],
                       ["train"])  # fmt: skip
        return

    # hashing methods first, the float baseline last; it opens on the release's best model
    methods = sorted({m.method for m in models}, key=lambda x: (x == FLOAT_METHOD, x))
    best = _best(project, models)
    left, mid, right = st.columns([2, 2, 3])
    method = left.selectbox(
        "Method", methods, index=methods.index(best.method) if best else 0, key="search_method"
    )
    bits_options = [m.bits for m in models if m.method == method]
    bits = mid.selectbox(
        "Bits",
        bits_options,
        index=bits_options.index(best.bits) if best and best.method == method else 0,
        format_func=lambda b: "float (cosine)" if b == 0 else str(b),
        key="search_bits",
    )
    info = next(m for m in models if m.method == method and m.bits == bits)
    k_max = min(50, info.n_database)
    k = right.slider("Results (k)", 1, k_max, min(10, k_max), key="search_k")
    if best is not None:
        st.caption(
            f"Opened on **{best.name}**, the highest caption → {items} mAP of this run "
            f"({ui.num(_best_map(project, best.name))}); pick any other above."
        )
    c = st.columns([2, 3])
    mode = c[0].radio(
        "Query by",
        MODES,
        format_func=lambda m: _mode_label(m, media),
        horizontal=True,
        key="search_mode",
    )
    rule = c[1].radio(
        "Relevant when a result",
        list(RULES),
        format_func=lambda r: (
            "shares any query label (evaluate's rule)"
            if r == "any"
            else "has all query labels (stricter)"
        ),
        horizontal=True,
        key="search_rule",
    )
    try:
        catalog = data.search_catalog(str(project))
        if mode == "caption":
            result = _caption_query(str(project), info.name, k, items, rule)
        else:
            result = _item_query(str(project), info.name, k, catalog.query_ids, rule)
    except SearchError as e:
        st.error(str(e))
        return
    if result is not None:
        _results(project, result)


def _best_rows(project: Path, models: list[ModelInfo]) -> pd.DataFrame:
    table = data.retrieval_table(project)
    if table.empty or "map" not in table:
        return table
    names = {m.name for m in models}
    keep = table["direction"].astype(str).str.startswith("text_to") & table["model"].isin(names)
    return table[keep & table["map"].notna()]


def _best(project: Path, models: list[ModelInfo]) -> ModelInfo | None:
    """The model with the highest caption → media mAP in this run's metrics."""
    rows = _best_rows(project, models)
    if rows.empty:
        return None
    name = rows.loc[rows["map"].idxmax(), "model"]
    return next(m for m in models if m.name == name)


def _best_map(project: Path, name: str) -> float | None:
    table = data.retrieval_table(project)
    rows = table[
        (table["model"] == name) & table["direction"].astype(str).str.startswith("text_to")
    ]
    return float(rows["map"].max()) if len(rows) else None


def _caption_query(project: str, name: str, k: int, items: str, rule: str) -> SearchResult | None:
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
    started = time.perf_counter()
    result = search_caption(codes, encoder, data.search_catalog(project), caption, k, rule)  # type: ignore[arg-type]
    st.session_state["search_seconds"] = time.perf_counter() - started
    return result


def _item_query(
    project: str, name: str, k: int, query_ids: tuple[str, ...], rule: str
) -> SearchResult:
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
    started = time.perf_counter()
    result = search_image(data.search_codes(project, name), catalog, sid, k, rule)  # type: ignore[arg-type]
    st.session_state["search_seconds"] = time.perf_counter() - started
    return result


def _results(project: Path, result: SearchResult) -> None:
    target = ui.ITEMS[result.media] if result.direction == "text_to_image" else "captions"
    relevant = result.n_relevant
    tally = "" if relevant is None else f" · **{relevant} of {len(result.hits)}** relevant"
    st.markdown(
        f"**{len(result.hits)}** nearest database {target} · model **{result.model}** "
        f"({ui.direction(result.direction_name)}){tally}"
    )
    seconds = st.session_state.get("search_seconds")
    took = f" · answered in {seconds * 1000:.0f} ms" if seconds is not None else ""
    st.caption(
        f"Relevant = a result that {RULES[result.rule]}. Query labels: {result.relevance}{took}."
    )
    for start in range(0, len(result.hits), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, hit in zip(cols, result.hits[start : start + COLUMNS], strict=False):
            with col:
                _card(project, hit, result.media)
    table = pd.DataFrame(
        [
            {"rank": h.rank, "sample_id": h.sample_id, "distance": h.distance,
             "similarity": h.similarity, "relevant": h.relevant, "caption": h.caption,
             "labels": ", ".join(sorted(h.labels))}
            for h in result.hits
        ]
    )  # fmt: skip
    ui.download(table, f"search-{result.model}", "search_dl")


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
