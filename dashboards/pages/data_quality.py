"""Data quality: quarantine by reason with examples (an image's thumbnail, a video's keyframe
strip or an audio player) and evidence, the cleaning rules, caption length / image size /
duration / label histograms, label sources and agreement, the review queue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from dashboards import data, ui

THUMB = 160


def _preview(slot: Any, project: Path, sample_id: Any, path: Any, media: str, caption: str) -> None:
    sid = sample_id if isinstance(sample_id, str) else None
    p = data.preview(project, sid, path if isinstance(path, str) else None, media, THUMB)
    ui.preview(slot, p, caption, THUMB)


def _captions(slot: Any, captions: Any) -> None:
    """The sample's captions under its preview: what a mismatch or duplicate is judged on."""
    texts = [str(c) for c in (captions if captions is not None else [])]
    if not texts:
        slot.caption("no caption")
        return
    shown = "\n".join(f"- {t}" for t in texts[:5])
    more = f"\n\n…and {len(texts) - 5} more" if len(texts) > 5 else ""
    slot.markdown(f"**Captions**\n{shown}{more}")


def _pair_text(row: pd.Series) -> str:
    parts = []
    if isinstance(row["distance_kind"], str):
        what = row["distance_kind"].replace("_", " ").replace("phash", "pHash")
        parts.append(f"{what} **{ui.num(row['distance'], 0)}**")
    if isinstance(row["score_kind"], str):
        parts.append(f"{row['score_kind']} **{ui.num(row['score'])}**")
    return " · ".join(parts)


def _examples(project: Path) -> None:
    counts = data.quarantine_counts(project)
    if counts.empty:
        st.success("Nothing was quarantined in this run.")
        return
    options = [f"{s}: {r}" for s, r in zip(counts["stage"], counts["reason"], strict=True)]
    n_by = dict(zip(options, counts["count"], strict=True))
    c = st.columns([3, 1])
    choice = c[0].selectbox(
        "Reason", options, key="dq_reason", format_func=lambda o: f"{o} ({n_by[o]})"
    )
    limit = c[1].number_input("Examples", 1, 50, 6, key="dq_limit")
    stage, reason = choice.split(": ", 1)
    q = data.quarantine(project)
    media = data.media_of(project)
    rows = q[(q["stage"] == stage) & (q["reason"] == reason)]
    st.metric("Quarantined for this reason", len(rows))
    for _, row in rows.head(int(limit)).iterrows():
        with st.container(border=True):
            left, mid, right = st.columns([1, 1, 2])
            name = row["sample_id"] if isinstance(row["sample_id"], str) else row["source_key"]
            _preview(left, project, row["sample_id"], row["image"], media, f"{name} (quarantined)")
            _captions(left, row["captions"])
            if isinstance(row["other_id"], str):
                other = row["other_id"]
                _preview(mid, project, other, row["other_image"], media, f"{other} (kept)")
                _captions(mid, row["other_captions"])
            right.markdown(f"**{row['source']}:{row['source_key']}** — {row['detail']}")
            pair = _pair_text(row)
            if pair:
                right.markdown(pair)
            try:
                right.json(json.loads(row["evidence"]), expanded=False)
            except (TypeError, ValueError):
                right.code(str(row["evidence"]), language=None)


def _histograms(project: Path) -> None:
    media = data.media_of(project)
    lengths, sizes, labels = (
        data.caption_lengths(project),
        data.image_sizes(project) if media != "audio" else pd.DataFrame(),  # clips: no frames
        data.label_counts(project),
    )
    durations = data.durations(project) if media != "image" else pd.DataFrame()
    c = st.columns(2)
    if len(lengths):
        c[0].markdown("**Caption length** (tokens per caption)")
        c[0].altair_chart(
            alt.Chart(lengths)
            .mark_bar()
            .encode(
                x=alt.X("tokens:Q", bin=alt.Bin(maxbins=40), title="tokens"),
                y=alt.Y("count():Q", title="captions"),
            ),
            width="stretch",
            key="dq_caption_hist",
        )
    if len(sizes):
        what = "Frame size" if media == "video" else "Image size"
        c[1].markdown(f"**{what}** (decoded width × height)")
        c[1].altair_chart(
            alt.Chart(sizes)
            .mark_circle(opacity=0.5)
            .encode(
                x=alt.X("width:Q"),
                y=alt.Y("height:Q"),
                color="format:N",
                tooltip=["sample_id", "width", "height", "format"],
            ),
            width="stretch",
            key="dq_size_scatter",
        )
    if len(durations):
        slot = c[1] if media == "audio" else st
        slot.markdown(f"**Duration** (seconds per {ui.ITEM[media]})")
        slot.altair_chart(
            alt.Chart(durations)
            .mark_bar()
            .encode(
                x=alt.X("duration_s:Q", bin=alt.Bin(maxbins=40), title="seconds"),
                y=alt.Y("count():Q", title=ui.ITEMS[media]),
            ),
            width="stretch",
            key="dq_duration_hist",
        )
    if len(labels):
        st.markdown("**Labels** (samples per label; pick a row of the table to list them)")
        st.altair_chart(
            alt.Chart(labels)
            .mark_bar()
            .encode(
                x=alt.X("label:N", sort="-y", title=None),
                y=alt.Y("samples:Q"),
                tooltip=["label", "samples"],
            ),
            width="stretch",
            key="dq_label_hist",
        )
        ui.drill(project, labels, "dq_label_counts", lambda r: ("label", r["label"]))


def _labels(project: Path) -> None:
    sources = data.label_sources(project)
    agree = data.label_agreement(project)
    c = st.columns(2)
    with c[0]:
        st.markdown("**Label sources** (labels kept, by source and method)")
        ui.drill(project, sources, "dq_label_sources",
                 lambda r: ("label_source", (r["source"], r["method"])))  # fmt: skip
    with c[1]:
        st.markdown("**Samples decided by**")
        ui.drill(project, agree["decided_by"], "dq_decided_by",
                 lambda r: ("decided_by", r["decided_by"]))  # fmt: skip
    if len(agree["pairs"]):
        st.markdown("**Agreement between methods**")
        st.dataframe(agree["pairs"], hide_index=True, key="dq_agreement")
        st.markdown("**Cohen's kappa per label** — one bar per pair of methods and label")
        st.altair_chart(
            alt.Chart(agree["per_label"])
            .mark_bar()
            .encode(
                x=alt.X("label:N", title=None),
                xOffset=alt.XOffset("pair:N"),
                y=alt.Y(
                    "kappa:Q", title="Cohen's kappa", stack=None, scale=alt.Scale(domain=[-1, 1])
                ),
                color=alt.Color("pair:N", legend=alt.Legend(orient="bottom")),
                tooltip=["pair", "label", alt.Tooltip("kappa:Q", format=".3f")],
            ),
            width="stretch",
            key="dq_kappa",
        )
    else:
        st.caption("No agreement figures: fewer than two labelling methods ran.")


def _review(project: Path) -> None:
    queue = data.review_queue(project)
    if queue.empty:
        st.caption("The review queue is empty.")
        return
    reasons = ["all", *sorted(queue["reason"].astype(str).unique())] if "reason" in queue else []
    pick = st.selectbox("Review reason", reasons, key="dq_review_reason") if reasons else "all"
    shown = queue if pick == "all" else queue[queue["reason"].astype(str) == pick]
    st.metric("Samples to review", len(shown))
    cols = [c for c in shown.columns if c not in ("image_path", "image")]
    st.dataframe(shown[cols], hide_index=True, key="dq_review")
    st.caption(
        "Answer them on the **Review** page (saved to `review/answers.jsonl`, merged by the "
        "next `dvc repro`), or in Label Studio (import `review_tasks.json`, set the export as "
        "`label.review.answers` in params.yaml)."
    )


def render(project: Path) -> None:
    st.title("Data quality")
    absent = data.missing(project, "raw_quarantine", "interim_samples", "quality")
    if len(absent) == 3:
        ui.empty_state(project, "quarantine or quality data", absent,
                       ["collect", "preprocess", "label", "clean"])  # fmt: skip
        return
    counts = data.quarantine_counts(project)
    st.subheader("Quarantine by reason")
    if len(counts):
        c = st.columns([2, 1])
        c[0].altair_chart(
            alt.Chart(counts)
            .mark_bar()
            .encode(
                y=alt.Y("reason:N", sort="-x", title=None),
                x=alt.X("count:Q", title="samples", axis=alt.Axis(format="d", tickMinStep=1)),
                color="stage:N",
                tooltip=["stage", "reason", "count"],
            ),
            width="stretch",
            key="dq_reason_chart",
        )
        with c[1]:
            ui.drill(project, counts, "dq_counts",
                     lambda r: ("quarantine", (r["stage"], r["reason"])))  # fmt: skip
    st.subheader("Examples and evidence")
    _examples(project)
    rules = data.clean_rules(project)
    if len(rules):
        st.subheader("Cleaning rules")
        st.dataframe(rules, hide_index=True, key="dq_rules")
    else:
        ui.empty_state(project, "cleaning report", data.missing(project, "quality"), ["clean"])
    st.subheader("Distributions")
    _histograms(project)
    st.subheader("Labels")
    if data.missing(project, "labels", "label_metrics"):
        ui.empty_state(project, "labels", data.missing(project, "labels", "label_metrics"),
                       ["label"])  # fmt: skip
    else:
        _labels(project)
        st.subheader("Review queue")
        _review(project)


ui.render(render)
