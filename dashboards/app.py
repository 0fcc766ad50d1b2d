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
    ("code_health.py", "Code health", ":material/grid_on:"),
)


def pages() -> list[st.Page]:
    return [
        st.Page(HERE / "pages" / file, title=title, icon=icon, default=i == 0)
        for i, (file, title, icon) in enumerate(PAGES)
    ]


st.set_page_config(page_title="cmrops", page_icon=":material/hub:", layout="wide")
project = data.project_dir()
with st.sidebar:
    st.caption("Project")
    st.code(str(project), language=None)
    if not project.is_dir():
        st.error(f"{project} is not a folder: set CMROPS_PROJECT_DIR to a cmrops project.")
st.navigation(pages()).run()
