"""Releases: every versioned run of the project (cmrops.releases) and trends across them - samples
in / kept / quarantined by reason, leaking pairs, mAP per model and bits, the alignment's AUROC
(logic: cmrops/release_view.py, from each release's recorded metrics)."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui


def _line(df: pd.DataFrame, y: str, colour: str, title: str, key: str) -> None:
    chart = (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("created:T", title="release (created, UTC)"),
            y=alt.Y(f"{y}:Q", title=title),
            color=alt.Color(
                f"{colour}:N",
                scale=alt.Scale(scheme="tableau20"),
                legend=alt.Legend(orient="bottom", columns=4),
            ),
            tooltip=["release", colour, alt.Tooltip(f"{y}:Q", format=",.4~f")],
        )
    )
    st.altair_chart(chart, width="stretch", key=key)


def render(_: Path) -> None:
    st.title("Releases")
    project = data.project_dir()
    listed = data.release_list(project)
    if not listed:
        st.info(
            f"**No release yet** in `{project}`: a versioned run (`make run`, or a DAG run on "
            "the project's params.yaml without overrides) records one in `.cmrops/releases/`.",
            icon=":material/hourglass_empty:",
        )
        st.code("make run", language="bash")
        return
    table = pd.DataFrame(
        [
            {
                "release": r.id,
                "created": r.created,
                "run_id": r.run_id,
                "data_version": r.data_version,
                "git tag": (r.git or {}).get("tag"),
                **{k: v for k, v in r.summary.items() if not isinstance(v, dict | list)},
            }
            for r in reversed(listed)
        ]
    )
    st.caption(
        f"{len(listed)} release(s), newest first. The sidebar's **Release** picks the one every "
        "page shows; trends below use each release's recorded metrics."
    )
    st.dataframe(table, hide_index=True, key="rel_table")
    t = data.trends(project)

    st.subheader("Samples")
    if len(t["samples"]):
        long = (
            t["samples"]
            .melt(
                id_vars=["release", "created", "stage"],
                value_vars=["in", "kept", "quarantined"],
                var_name="count",
                value_name="samples",
            )
            .dropna()
        )
        long["series"] = long["stage"] + " " + long["count"]
        _line(long, "samples", "series", "samples", "rel_samples")
    if len(t["reasons"]):
        reasons = t["reasons"].assign(series=lambda d: d["stage"] + ": " + d["reason"])
        st.markdown("**Quarantined by reason**")
        _line(reasons, "samples", "series", "samples", "rel_reasons")

    c = st.columns(2)
    with c[0]:
        st.markdown("**Leaking near-duplicate pairs** (across split sets)")
        if len(t["leakage"]):
            _line(
                t["leakage"].assign(what="leaking pairs"),
                "leaking_pairs",
                "what",
                "pairs",
                "rel_leakage",
            )
        else:
            st.caption("No split metrics recorded.")
    with c[1]:
        st.markdown("**Alignment AUROC** (true vs swapped captions, held out)")
        if len(t["alignment"]):
            auroc = (
                t["alignment"]
                .melt(
                    id_vars=["release", "created"],
                    value_vars=["auroc", "auroc_planted"],
                    var_name="what",
                    value_name="AUROC",
                )
                .dropna()
            )
            _line(auroc, "AUROC", "what", "AUROC", "rel_auroc")
        else:
            st.caption("No alignment metrics recorded.")

    st.subheader("mAP per model and bits")
    maps = t["maps"]
    if maps.empty:
        st.caption("No retrieval metrics recorded.")
        return
    directions = list(dict.fromkeys(maps["direction"]))
    direction = st.selectbox("Direction", directions, format_func=ui.direction, key="rel_dir")
    rows = maps[maps["direction"] == direction]
    latest = rows[rows["release"] == rows["release"].max()].sort_values("map", ascending=False)
    models = list(dict.fromkeys([*latest["model"], *rows["model"]]))
    picked = st.multiselect("Models", models, default=models[:6], key=f"rel_models_{direction}")
    _line(rows[rows["model"].isin(picked)], "map", "model", "mAP (hash, tie-aware)", "rel_maps")
    ui.download(rows, f"map-trend-{direction}", "rel_maps_dl")


ui.render(render)
