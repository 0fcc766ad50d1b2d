"""Retrieval: the metric table by model, bit length and direction with the float baseline; PR
(within a Hamming radius) and P@K curves; mAP across runs from the run log."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui

ALL = "all"
SHOWN = 5  # models drawn on the curves by default: the best of the selection


def _filters(table: pd.DataFrame) -> tuple[str, str | int, str]:
    c = st.columns(3)
    methods = [ALL, *sorted(table["method"].dropna().unique())]
    bits = [ALL, *sorted(int(b) for b in table["bits"].unique())]
    directions = list(dict.fromkeys(table["direction"]))
    method = c[0].selectbox("Method", methods, key="ret_method")
    nbits = c[1].selectbox("Bits", bits, key="ret_bits")
    direction = c[2].selectbox(
        "Direction", directions, format_func=ui.direction, key="ret_direction"
    )
    return method, nbits, direction


def _select(df: pd.DataFrame, method: str, bits: str | int, direction: str) -> pd.DataFrame:
    keep = df["direction"] == direction
    if method != ALL:
        keep &= df["method"] == method
    if bits != ALL:
        keep &= df["bits"] == int(bits)
    return df[keep]


def _curve(df: pd.DataFrame, x: str, y: str, title: str, key: str, log_x: bool = False) -> None:
    scale = alt.Scale(type="log") if log_x else alt.Scale()
    chart = (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X(f"{x}:Q", scale=scale),
            y=alt.Y(f"{y}:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "model:N",
                scale=alt.Scale(scheme="tableau20"),
                legend=alt.Legend(orient="bottom", columns=3, labelLimit=200),
            ),
            strokeDash="series:N" if "series" in df else alt.value([1, 0]),
            tooltip=list(df.columns),
        )
        .properties(title=title)
    )
    st.altair_chart(chart, width="stretch", key=key)


def _history(project: Path, direction: str, models: list[str]) -> None:
    hist = data.history(project)
    hist = hist[(hist["direction"] == direction) & hist["model"].isin(models)]
    if hist.empty:
        st.caption(
            "No evaluate run in the run log (`.cmrops/runs.jsonl`) yet: every `make run`, "
            "`dvc repro` or `dvc exp run` that reaches evaluate adds a point here."
        )
        return
    runs = hist["run_id"].nunique()
    st.caption(f"{runs} evaluate run(s) logged; the data version tells DVC experiments apart.")
    chart = (
        alt.Chart(hist)
        .mark_line(point=True)
        .encode(
            x=alt.X("finished_at:T", title="finished (UTC)", axis=alt.Axis(format="%m-%d %H:%M")),
            y=alt.Y("map:Q", title="mAP (hash, tie-aware)"),
            color="model:N",
            tooltip=["run_id", "data_version", "model", "direction", "map", "finished_at"],
        )
    )
    st.altair_chart(chart, width="stretch", key="ret_history_chart")
    st.dataframe(hist, hide_index=True, key="ret_history")


def render(project: Path) -> None:
    st.title("Retrieval")
    table = data.retrieval_table(project)
    if table.empty:
        absent = data.missing(project, "retrieval") or ["models in metrics/retrieval.json"]
        ui.empty_state(project, "retrieval metrics", absent, ["train", "evaluate"])
        return
    method, bits, direction = _filters(table)
    rows = _select(table, method, bits, direction)
    if rows.empty:
        st.warning(f"No model with method {method} and {bits} bits.", icon=":material/filter_alt:")
        return
    best = rows.loc[rows["map"].idxmax()]
    c = st.columns(4)
    c[0].metric("Best mAP (hash)", ui.num(best["map"]), help=f"{best['model']}, tie-aware")
    c[1].metric("Its float baseline", ui.num(best["float_map"]),
                help="cosine on the continuous outputs")  # fmt: skip
    c[2].metric("Gap (float − hash)", ui.num(best["gap"]))
    c[3].metric("Queries × database", f"{ui.num(best['queries'])} × {ui.num(best['database'])}")
    ui.download(rows, f"retrieval-{direction}", "ret_table_dl")
    st.dataframe(
        rows,
        hide_index=True,
        key="ret_table",
        column_config={
            "map": "mAP",
            "map_database_order": "mAP (database order)",
            "float_map": "float mAP",
        },
    )

    st.subheader("Curves")
    ranked = list(rows.sort_values("map", ascending=False)["model"])
    picked = st.multiselect(
        f"Models on the curves ({len(ranked)} match the filters; the best {SHOWN} by mAP shown)",
        ranked,
        default=ranked[:SHOWN],
        key=f"ret_models_{method}_{bits}_{direction}",  # a pick per filter choice
    )
    if not picked:
        st.caption("Pick at least one model to draw its curves.")
    c = st.columns(2)
    pr = _select(data.curves(project, "pr"), method, bits, direction)
    pr = pr[pr["model"].isin(picked)] if "model" in pr else pr
    with c[0]:
        if len(pr):
            _curve(pr, "recall", "precision",
                   "Precision / recall within Hamming radius", "ret_pr_chart")  # fmt: skip
        else:
            st.caption("No PR curve in plots/pr.")
    pk = _select(data.curves(project, "pk"), method, bits, direction)
    pk = pk[pk["model"].isin(picked)] if "model" in pk else pk
    with c[1]:
        if len(pk):
            show_float = st.checkbox("Float baseline", value=True, key="ret_show_float")
            cols = ["precision", "float_precision"] if show_float else ["precision"]
            cols = [x for x in cols if x in pk]
            long = pk.melt(
                id_vars=["model", "k"], value_vars=cols, var_name="series", value_name="P@K"
            )
            _curve(long, "k", "P@K", "Precision at K", "ret_pk_chart", log_x=True)
        else:
            st.caption("No P@K curve in plots/pk.")

    st.subheader("History across runs")
    _history(project, direction, picked)


ui.render(render)
