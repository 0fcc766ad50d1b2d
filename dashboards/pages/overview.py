"""Overview: the latest run (run id, data version, stages), headline metrics, the sample funnel."""

from __future__ import annotations

from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui


def render(project: Path) -> None:
    st.title("Overview")
    head = data.headline(project)
    run = data.latest_run(project)
    if not head and not run:
        ui.empty_state(project, "pipeline outputs", data.missing(project, "raw_metrics"),
                       list(ui.COMMANDS))  # fmt: skip
        return

    st.subheader("Latest run")
    if run:
        c = st.columns(2)
        c[0].markdown(f"Run id  \n`{run['run_id']}`")
        version = run["data_version"]
        c[1].markdown(
            f"Data version (DVC)  \n`{version}`"
            if version
            else "Data version (DVC)  \nnone yet: no `dvc.lock` and no git commit"
        )
        c = st.columns(3)
        c[0].metric("Status", run["status"])
        c[1].metric("Stages", len(run["stages"]))
        c[2].metric("Finished (UTC)", run["finished_at"].strftime("%Y-%m-%d %H:%M:%S"))
        st.dataframe(
            run["stages"],
            hide_index=True,
            column_config={
                "duration_s": st.column_config.NumberColumn("duration (s)", format="%.2f"),
                "finished_at": st.column_config.DatetimeColumn("finished (UTC)"),
            },
            key="ov_stages",
        )
    else:
        st.info(
            "No run recorded in `.cmrops/runs.jsonl` yet (stages record themselves there when "
            "run through `cmrops`, `dvc repro` or the DAG); the figures below come from the "
            "metrics files."
        )

    if head:
        st.subheader("Headline")
        c = st.columns(4)
        c[0].metric("Samples in", ui.num(head["samples_in"]))
        c[1].metric("Kept after clean", ui.num(head["kept"]))
        c[2].metric("Quarantined", ui.num(head["quarantined"]))
        c[3].metric("Leaking pairs", ui.num(head["leaking_pairs"]))
        c = st.columns(4)
        c[0].metric("Cleaning precision", ui.num(head["precision"]),
                    help="on the defects the synthetic source planted")  # fmt: skip
        c[1].metric("Cleaning recall", ui.num(head["recall"]))
        c[2].metric("Models evaluated", ui.num(head["models"]))
        c[3].metric(
            "Best mAP (hash)",
            ui.num(head["best_map"]),
            help=f"{head['best_model']}, {ui.direction(head['best_direction'])} (tie-aware)"
            if head["best_model"]
            else "run `cmrops evaluate`",
        )

    funnel = data.funnel(project)
    if len(funnel):
        st.subheader("Samples through the stages")
        long = funnel.melt(id_vars="stage", value_vars=["kept", "quarantined"],
                           var_name="outcome", value_name="samples").dropna()  # fmt: skip
        long["samples"] = long["samples"].astype(int)
        chart = (
            alt.Chart(long)
            .mark_bar()
            .encode(
                y=alt.Y("stage:N", sort=list(funnel["stage"]), title=None),
                x=alt.X("samples:Q", stack="zero", title="samples", axis=alt.Axis(format="d")),
                color=alt.Color("outcome:N", scale=alt.Scale(range=["#4c78a8", "#e45756"])),
                order=alt.Order("outcome:N"),
                tooltip=["stage", "outcome", "samples"],
            )
        )
        st.altair_chart(chart, width="stretch", key="ov_funnel_chart")
        ui.drill(project, funnel, "ov_funnel",
                 lambda r: ("stage", (r["stage"], "quarantined" if r["quarantined"] else "kept")),
                 "samples (quarantined by the stage, else kept)")  # fmt: skip
    counts = data.quarantine_counts(project)
    if len(counts):
        st.subheader("Quarantined by stage and reason")
        ui.drill(project, pd.DataFrame(counts), "ov_quarantine",
                 lambda r: ("quarantine", (r["stage"], r["reason"])))  # fmt: skip
        st.caption("Examples of each reason, with their evidence: the **Data quality** page.")


ui.render(render)
