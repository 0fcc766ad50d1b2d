"""Splits: set sizes, label balance per set, the near-duplicate leakage audit."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import streamlit as st

from dashboards import data, ui


def render(project: Path) -> None:
    st.title("Splits")
    absent = data.missing(project, "split")
    if absent:
        ui.empty_state(project, "split", absent, ["split"])
        return
    leak = data.leakage(project)
    proto = leak["protocol"]
    if proto:
        st.caption(
            f"Protocol **{proto.get('name', '?')}** ({proto.get('kind', '?')}): "
            + ", ".join(f"{k} {v}" for k, v in proto.items() if k not in ("name", "kind"))
        )

    st.subheader("Sizes")
    sizes = data.split_sizes(project)
    cols = st.columns(max(len(sizes), 1))
    for col, (name, n) in zip(cols, zip(sizes["set"], sizes["samples"], strict=True), strict=False):
        col.metric(f"{name}", ui.num(n))
    if len(sizes):
        ui.drill(project, sizes, "splits_sizes", lambda r: ("split", r["set"]))

    st.subheader("Label balance")
    balance = data.split_balance(project)
    if balance.empty:
        st.caption("No labels in the split report (unlabelled data).")
    else:
        measure = st.selectbox(
            "Show",
            ["share", "samples"],
            key="splits_measure",
            format_func=lambda m: "share of the set" if m == "share" else "samples",
        )
        chart = (
            alt.Chart(balance)
            .mark_bar()
            .encode(
                x=alt.X("label:N", title=None),
                xOffset="set:N",
                y=alt.Y(f"{measure}:Q", title=measure),
                color="set:N",
                tooltip=["label", "set", "samples", alt.Tooltip("share:Q", format=".3f")],
            )
        )
        if measure == "share":
            overall = (
                alt.Chart(balance.drop_duplicates("label"))
                .mark_tick(color="black", thickness=2)
                .encode(x="label:N", y="total_share:Q", tooltip=["label", "total_share"])
            )
            chart = chart + overall
        st.altair_chart(chart, width="stretch", key="splits_balance_chart")
        table = balance.pivot(index="label", columns="set", values=measure).reset_index()
        st.dataframe(table, hide_index=True, key="splits_balance")

    st.subheader("Leakage audit")
    c = st.columns(3)
    c[0].metric("Leaking near-duplicate pairs", ui.num(leak["total"]))
    radius = leak["radius"]
    c[1].metric("Image radius (pHash)", ui.num(radius.get("image")))
    c[2].metric("Caption radius (SimHash)", ui.num(radius.get("caption")))
    st.dataframe(leak["pairs"], hide_index=True, key="splits_leak_pairs")
    if len(leak["listed"]):
        st.markdown("**Leaking pairs** (listed up to `split.audit_max_listed`)")
        st.dataframe(leak["listed"], hide_index=True, key="splits_leak_listed")
    groups = leak["groups"]
    if groups:
        st.caption(
            f"{ui.num(groups.get('count'))} near-duplicate groups kept whole (largest "
            f"{ui.num(groups.get('largest'))}); a group never straddles two sets."
        )


ui.render(render)
