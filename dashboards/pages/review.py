"""Review: answer the label stage's review queue (accept / reject / edit labels), confirm or
overrule clean's quarantine decisions, review samples picked on the map; least confident first,
a page at a time. Answers go to the project's answer log (review/answers.jsonl, cmrops.answers),
which label and clean merge on their next run; what is pending and what is merged is shown."""

from __future__ import annotations

import getpass
import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from cmrops import answers
from dashboards import data, ui

THUMB = 200
KINDS = {"labels": "Label queue", "quarantine": "Quarantine", "selection": "Selection"}
ORDERS = {
    "doubt": "least confident first",
    "confident": "most confident first",
    "sample_id": "by sample id",
}
STATUSES = {"open": "to review", "answered": "answered", "all": "all"}
PAGE_SIZES = (10, 25, 50, 100)
#: Session key the Map page fills with the sample ids it sends to review.
SELECTION = "review_selection"
REVIEWER_ENV = "CMROPS_REVIEWER"
MERGE_COMMAND = "dvc repro    # or: " + ui.COMMANDS["label"] + " && " + ui.COMMANDS["clean"]


def _default_reviewer() -> str:
    """A proxy's user header when the app runs behind one, else $CMROPS_REVIEWER, else the
    account running the app."""
    try:
        headers = st.context.headers
        for h in ("X-Forwarded-User", "X-Auth-Request-User", "X-Forwarded-Email"):
            if headers.get(h):
                return str(headers[h])
    except Exception:  # no request context (a bare script run)
        pass
    env = os.environ.get(REVIEWER_ENV, "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _who() -> str:
    with st.sidebar:
        return st.text_input(
            "Reviewer",
            value=_default_reviewer(),
            key="rv_who",
            help="Recorded with every answer (with the time, UTC).",
        ).strip()


def render(shown: Path) -> None:
    st.title("Review")
    project = data.project_dir()  # answers are about the workspace, merged by its next run
    if shown != project:
        st.info(
            "Review works on the workspace (the latest run), whichever release the sidebar "
            "shows: answers are merged by the workspace's next run.",
            icon=":material/info:",
        )
    absent = data.missing(project, "review_queue", "clean_quarantine")
    if len(absent) == 2 and not st.session_state.get(SELECTION):
        ui.empty_state(project, "review queue or quarantine decisions", absent,
                       ["label", "clean"])  # fmt: skip
        return
    who = _who()
    media = data.media_of(project)
    index = data.answer_index(project)
    states = data.merge_states(project)
    _answers_summary(project, index, states)

    selection = tuple(st.session_state.get(SELECTION) or ())
    counts = {k: _count(project, k, selection) for k in KINDS}
    kind = st.radio(
        "Review",
        list(KINDS),
        horizontal=True,
        key="rv_kind",
        format_func=lambda k: f"{KINDS[k]} ({'—' if counts[k] is None else counts[k]})",
    )
    path = data.review_file(project, kind, selection if kind == "selection" else None)
    if path is None:
        _empty(project, kind)
        return
    items = _ordered(data.review_light(path), kind, index)
    if items is None or items.empty:
        return
    size = int(st.session_state.get("rv_size", PAGE_SIZES[0]))
    pages = max(1, math.ceil(len(items) / size))
    if int(st.session_state.get("rv_page", 1)) > pages:  # the filters shrank the list
        st.session_state["rv_page"] = pages
    c = st.columns([1, 1, 4])
    c[1].selectbox("Per page", PAGE_SIZES, key="rv_size")
    page = c[0].number_input("Page", 1, pages, 1, key="rv_page", help=f"of {pages}")
    shown = items.iloc[(int(page) - 1) * size : int(page) * size]
    st.caption(
        f"Items {(int(page) - 1) * size + 1}–{(int(page) - 1) * size + len(shown)} of "
        f"{len(items)} · page {int(page)} of {pages}. In a form, Tab moves between fields and "
        "Enter saves."
    )
    vocab = data.vocabulary(project)
    for item in data.review_page(path, tuple(int(p) for p in shown["pos"])):
        with st.container(border=True, key=f"rv_item_{item['sample_id']}"):
            _item(project, kind, item, media, vocab, who, index, states)


def _count(project: Path, kind: str, selection: tuple[str, ...]) -> int | None:
    if kind == "selection":
        return len(selection)
    path = data.review_file(project, kind)
    return None if path is None else len(data.review_light(path))


def _empty(project: Path, kind: str) -> None:
    if kind == "selection":
        st.info(
            "No samples selected: draw a lasso or a box around points on the **Map** page and "
            "press *Send to review*.",
            icon=":material/scatter_plot:",
        )
    elif kind == "labels":
        ui.empty_state(project, "review queue", data.missing(project, "review_queue"), ["label"])
    else:
        ui.empty_state(
            project, "quarantine decisions", data.missing(project, "clean_quarantine"), ["clean"]
        )


def _ordered(light: pd.DataFrame, kind: str, index: answers.AnswerIndex) -> pd.DataFrame | None:
    """Filter by reason and status and order the light index (no item read yet)."""
    c = st.columns([2, 1, 2])
    reasons = ["all", *sorted(light["reason"].dropna().unique())]
    reason = c[0].selectbox("Reason", reasons, key="rv_reason")
    status = c[1].selectbox("Status", list(STATUSES), format_func=STATUSES.get, key="rv_status")
    order = c[2].selectbox("Order", list(ORDERS), format_func=ORDERS.get, key="rv_order")
    df = light if reason == "all" else light[light["reason"] == reason]
    answered = _answered(df, kind, index)
    if status == "open":
        df = df[~answered]
    elif status == "answered":
        df = df[answered]
    if order == "confident":
        df = df.sort_values(["doubt", "sample_id"], ascending=[True, True])
    elif order == "sample_id":
        df = df.sort_values("sample_id")
    if df.empty:
        st.success(f"Nothing {STATUSES[status]} here ({len(light)} items in all).")
    if kind == "labels" and status != "open":
        st.caption(
            "Answers leave the label queue once label merged them (the queue holds samples no "
            "person labelled): every answer and its status is under *Latest answers* above."
        )
    return df


def _answered(df: pd.DataFrame, kind: str, index: answers.AnswerIndex) -> pd.Series:
    if kind == "quarantine":
        by = {s: str(r.data["reason"]) for s, r in index.verdicts.items()}
        return pd.Series(
            [by.get(s) == r for s, r in zip(df["sample_id"], df["reason"], strict=True)],
            index=df.index,
        )
    return df["sample_id"].isin(index.labels.keys())


def _preview(
    slot: Any, project: Path, sample_id: str | None, path: str | None, media: str, caption: str
) -> None:
    p = data.preview(project, sample_id, data.report.media_path(project, path), media, THUMB)
    ui.preview(slot, p, caption, THUMB)


def _captions(slot: Any, captions: list[str]) -> None:
    if captions:
        slot.markdown("\n".join(f"- {c}" for c in captions[:8]))
        if len(captions) > 8:
            slot.caption(f"… and {len(captions) - 8} more captions")
    else:
        slot.caption("no caption")


def _candidates(slot: Any, item: dict[str, Any]) -> None:
    rows = item.get("candidates") or []
    if not rows:
        slot.caption("No candidate labels from any method.")
        return
    df = pd.DataFrame(rows)[["label", "confidence", "source", "method", "passed", "selected"]]
    slot.dataframe(
        df,
        hide_index=True,
        key=f"rv_cands_{item['sample_id']}",
        column_config={
            "confidence": st.column_config.ProgressColumn(
                "confidence", min_value=0.0, max_value=1.0, format="%.2f"
            )
        },
    )


def _status(slot: Any, rec: answers.Record | None, stage: str, state: answers.MergeState) -> None:
    if rec is None:
        return
    d = rec.data
    what = (", ".join(d["labels"]) or "no label") if rec.kind == "labels" else d["verdict"]
    when = f"{d['who']} at {str(d['at'])[:19].replace('T', ' ')} UTC"
    if state.merged(rec):
        slot.success(f"Answered ({what}) by {when} · merged by {stage}", icon=":material/done_all:")
    else:
        slot.warning(
            f"Answered ({what}) by {when} · **pending**: rerun {stage} to merge",
            icon=":material/schedule:",
        )


def _item(
    project: Path,
    kind: str,
    item: dict[str, Any],
    media: str,
    vocab: list[str],
    who: str,
    index: answers.AnswerIndex,
    states: dict[str, answers.MergeState],
) -> None:
    sid = item["sample_id"]
    left, mid, right = st.columns([2, 3, 3])
    _preview(left, project, sid, item.get("image_path"), media, sid)
    if kind == "quarantine" and item.get("other_id"):
        _preview(
            left,
            project,
            item["other_id"],
            item.get("other_path"),
            media,
            f"{item['other_id']} (kept)",
        )
    mid.markdown(
        f"**{item.get('reason')}** · doubt {ui.num(item.get('doubt'), 2)}"
        + (f" · queue rank {item['rank']}" if item.get("rank") else "")
    )
    if item.get("detail"):
        mid.caption(str(item["detail"]))
    _captions(mid, list(item.get("captions") or []))
    mid.caption(
        f"{item.get('source')}:{item.get('source_key')} · labels now: "
        + (", ".join(item.get("labels") or []) or "none")
    )
    if kind == "quarantine":
        try:
            mid.json(json.loads(item.get("evidence") or "{}"), expanded=False)
        except ValueError:
            mid.code(str(item.get("evidence")), language=None)
        rec = index.verdicts.get(sid)
        _status(
            right,
            rec if rec and rec.data["reason"] == item["reason"] else None,
            "clean",
            states["clean"],
        )
        _verdict_form(project, right, item, who)
    else:
        _candidates(mid, item)
        _status(right, index.labels.get(sid), "label", states["label"])
        _label_form(project, right, item, vocab, who)


def _save(project: Path, record: dict[str, Any]) -> None:
    answers.append(data.answer_log_path(project), [record])
    st.toast(f"Saved to {answers.DEFAULT_PATH}", icon=":material/check:")


def _label_form(project: Path, slot: Any, item: dict[str, Any], vocab: list[str], who: str) -> None:
    sid = item["sample_id"]
    suggested = sorted(item.get("auto_labels") or item.get("labels") or [])
    options = sorted(set(vocab) | set(suggested))
    with slot.form(key=f"rv_form_{sid}", border=False):
        chosen = st.multiselect(
            "Labels",
            options,
            default=suggested,
            key=f"rv_labels_{sid}",
            placeholder="no label applies",
        )
        note = st.text_input("Note (optional)", key=f"rv_note_{sid}")
        c = st.columns(3)
        save = c[0].form_submit_button("Save labels", type="primary")  # Enter presses this one
        accept = c[1].form_submit_button("Accept suggested")
        reject = c[2].form_submit_button("No label applies")
    if not (save or accept or reject):
        return
    if not who:
        slot.error("Type your name in **Reviewer** (sidebar) first: every answer records who.")
        return
    if reject or (save and not chosen):
        action, labels = "reject", []
    elif accept or sorted(chosen) == suggested:
        action, labels = "accept", suggested
    else:
        action, labels = "edit", chosen
    _save(project, answers.label_answer(sid, labels, action, who, note))
    st.rerun()


def _verdict_form(project: Path, slot: Any, item: dict[str, Any], who: str) -> None:
    sid = item["sample_id"]
    with slot.form(key=f"rv_qform_{sid}", border=False):
        verdict = st.radio(
            "Verdict",
            answers.VERDICTS,
            horizontal=True,
            key=f"rv_verdict_{sid}",
            format_func=lambda v: (
                "Confirm: keep it out" if v == "confirm" else "Overrule: return the sample"
            ),
        )
        why = st.text_input("Why (required to overrule)", key=f"rv_why_{sid}")
        saved = st.form_submit_button("Save verdict", type="primary")
    if not saved:
        return
    if not who:
        slot.error("Type your name in **Reviewer** (sidebar) first: every answer records who.")
        return
    try:
        rec = answers.quarantine_verdict(sid, "clean", item["reason"], verdict, why, who)
    except answers.AnswerLogError as e:
        slot.error(str(e))
        return
    _save(project, rec)
    st.rerun()


def _answers_summary(
    project: Path, index: answers.AnswerIndex, states: dict[str, answers.MergeState]
) -> None:
    """Answers in the log, merged vs pending per stage, and the table of the latest ones."""
    labels, verdicts = list(index.labels.values()), list(index.verdicts.values())
    pending = {
        "label": sum(not states["label"].merged(r) for r in labels),
        "clean": sum(not states["clean"].merged(r) for r in verdicts),
    }
    c = st.columns(4)
    c[0].metric(
        "Answers in the log",
        len(index.records),
        help=f"{answers.DEFAULT_PATH}; the latest per sample counts",
    )
    c[1].metric("Samples answered", len(index.labels) + len(index.verdicts))
    c[2].metric(
        "Pending",
        pending["label"] + pending["clean"],
        help="answered after label / clean last merged the log",
    )
    c[3].metric("Merged", len(labels) + len(verdicts) - pending["label"] - pending["clean"])
    for state in states.values():
        if state.detail and (state.ran or index.records):
            st.warning(state.detail, icon=":material/sync_problem:")
    if pending["label"] or pending["clean"]:
        st.info(
            f"{pending['label']} label answer(s) and {pending['clean']} quarantine verdict(s) "
            "wait for the next run; `dvc repro` reruns label and clean (the log is a dependency "
            "of both) and everything after them that changes.",
            icon=":material/schedule:",
        )
        st.code(MERGE_COMMAND, language="bash")
    if index.torn_bytes:
        st.caption(
            f"{index.torn_bytes} bytes at the end of the log are an unfinished write "
            "(ignored; the next answer cuts them)."
        )
    with st.expander("Latest answers: pending and merged"):
        rows = []
        for stage, recs in (("label", labels), ("clean", verdicts)):
            for r in recs:
                d = r.data
                rows.append(
                    {
                        "sample_id": r.sample_id,
                        "kind": r.kind,
                        "answer": ", ".join(d["labels"]) or "no label"
                        if r.kind == "labels"
                        else f"{d['verdict']} {d['reason']}",
                        "action": d.get("action") or d.get("verdict"),
                        "note": d.get("note") or d.get("why") or "",
                        "who": d["who"],
                        "at": d["at"],
                        "status": "merged" if states[stage].merged(r) else f"pending ({stage})",
                    }
                )
        table = pd.DataFrame(
            rows, columns=["sample_id", "kind", "answer", "action", "note", "who", "at", "status"]
        )
        if table.empty:
            st.caption("No answers yet.")
        else:
            table = table.sort_values("at", ascending=False)
            st.dataframe(table, hide_index=True, key="rv_answers")
            ui.download(table, "review-answers", "rv_answers_dl")


ui.render(render)
