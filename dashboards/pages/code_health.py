"""Code health: bit balance and bit correlation of the trained hash codes (database side)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import streamlit as st

from dashboards import data, ui


def render(project: Path) -> None:
    st.title("Code health")
    health = data.code_health(project)
    if health.empty:
        absent = data.missing(project, "retrieval") or ["code_health in metrics/retrieval.json"]
        ui.empty_state(project, "code health figures", absent, ["train", "evaluate"])
        return
    st.caption(
        "Good codes use every bit half of the time (balance deviation 0; 0.5 = a constant bit) "
        "and their bits are uncorrelated; collapsed codes pile samples into few buckets."
    )
    st.dataframe(health, hide_index=True, key="ch_table")

    c = st.columns(2)
    models = list(dict.fromkeys(health["model"]))
    model = c[0].selectbox("Model", models, key="ch_model")
    modalities = list(health.loc[health["model"] == model, "modality"])
    modality = c[1].selectbox("Modality", modalities, key="ch_modality")
    row = health[(health["model"] == model) & (health["modality"] == modality)].iloc[0]
    c = st.columns(4)
    c[0].metric("Balance deviation", ui.num(row["balance_deviation"]))
    c[1].metric("Constant bits", f"{ui.num(row['constant_bits'])} / {ui.num(row['bits'])}")
    c[2].metric("Mean |bit correlation|", ui.num(row["bit_correlation"]))
    c[3].metric("Distinct codes", f"{ui.num(row['distinct'])} / {ui.num(row['codes'])}")

    stats = data.bit_stats(project, model, modality)
    left, right = st.columns(2)
    left.markdown(f"**Bit balance** — P(bit = 1) over {stats['n_codes']} database codes")
    rule = alt.Chart().mark_rule(strokeDash=[4, 4]).encode(y=alt.datum(0.5))
    bars = (
        alt.Chart(stats["balance"])
        .mark_bar()
        .encode(
            x=alt.X("bit:O"),
            y=alt.Y("p_one:Q", scale=alt.Scale(domain=[0, 1]), title="P(bit = 1)"),
            color=alt.Color("deviation:Q", scale=alt.Scale(domain=[0, 0.5], scheme="orangered")),
            tooltip=["bit", "p_one", "deviation"],
        )
    )
    left.altair_chart(alt.layer(bars, rule), width="stretch", key="ch_balance_chart")
    right.markdown("**Bit correlation** — Pearson, grey where a bit is constant")
    corr = stats["correlation"].assign(live=lambda d: d["corr"].notna())
    corr["corr"] = corr["corr"].fillna(0.0)  # Vega-Lite drops null cells: keep the grid whole
    heat = (
        alt.Chart(corr)
        .mark_rect()
        .encode(
            x=alt.X("bit_i:O", title="bit"),
            y=alt.Y("bit_j:O", title="bit"),
            color=alt.condition(
                "datum.live",
                alt.Color("corr:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue")),
                alt.value("#dddddd"),
            ),
            tooltip=["bit_i", "bit_j", alt.Tooltip("corr:Q", format=".3f")],
        )
    )
    right.altair_chart(heat, width="stretch", key="ch_corr_chart")


ui.render(render)
