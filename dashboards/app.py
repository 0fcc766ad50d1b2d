"""The cmrops dashboard: an ``st.navigation`` router over ``pages/`` (pages only render).

Run from the repository root::

    streamlit run dashboards/app.py            # the project in the current directory
    CMROPS_PROJECT_DIR=/path/to/project streamlit run dashboards/app.py

``.streamlit/config.toml`` serves it on 127.0.0.1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `dashboards` importable when run outside the venv's .pth
    sys.path.insert(0, str(HERE.parent))

from dashboards import data  # noqa: E402

#: (file under pages/, title, icon), in menu order.
PAGES: tuple[tuple[str, str, str], ...] = (
    ("overview.py", "Overview", ":material/dashboard:"),
    ("data_quality.py", "Data quality", ":material/rule:"),
    ("splits.py", "Splits", ":material/call_split:"),
    ("retrieval.py", "Retrieval", ":material/leaderboard:"),
    ("search.py", "Search", ":material/search:"),
    ("review.py", "Review", ":material/rate_review:"),
    ("map.py", "Map", ":material/scatter_plot:"),
    ("releases.py", "Releases", ":material/history:"),
    ("code_health.py", "Code health", ":material/grid_on:"),
)


def pages() -> list[st.Page]:
    return [
        st.Page(HERE / "pages" / file, title=title, icon=icon, default=i == 0)
        for i, (file, title, icon) in enumerate(PAGES)
    ]


def release_picker(project: Path) -> None:
    """Which release every page shows: the latest by default; the workspace when it is not a
    release (a run not versioned yet) or when there is none."""
    listed = data.release_list(project)
    if not listed:
        st.caption("No release recorded yet: the pages show the workspace.")
        return
    current = data.release_view.workspace_release(project, listed)
    ids = [r.id for r in reversed(listed)]
    options = ids if current is not None else [*ids, data.WORKSPACE]

    def name(option: str) -> str:
        if option == data.WORKSPACE:
            return "workspace (not a release yet)"
        tags = ["latest"] if option == ids[0] else []
        tags += ["workspace"] if current is not None and option == current.id else []
        return f"{option} ({', '.join(tags)})" if tags else option

    # the pick lives in a plain session key (kept on every page); the widget mirrors it
    pick = st.session_state.get(data.RELEASE_KEY)
    st.selectbox(
        "Release",
        options,
        index=options.index(pick) if pick in options else 0,
        format_func=name,
        key="release_box",
        on_change=lambda: st.session_state.update(
            {data.RELEASE_KEY: st.session_state["release_box"]}
        ),
    )
    view = data.shown_view(project)
    if view.missing:
        st.warning(
            f"Not in the local DVC cache for this release: {', '.join(view.missing[:6])}"
            f"{' …' if len(view.missing) > 6 else ''}. Pages that need them say so; "
            f"`cmrops release checkout {view.release.id if view.release else ''}` restores them.",
            icon=":material/cloud_download:",
        )


st.set_page_config(page_title="cmrops", page_icon=":material/hub:", layout="wide")
project = data.project_dir()
with st.sidebar:
    st.caption("Project")
    st.code(str(project), language=None)
    if not project.is_dir():
        st.error(f"{project} is not a folder: set CMROPS_PROJECT_DIR to a cmrops project.")
    else:
        release_picker(project)
st.navigation(pages()).run()
