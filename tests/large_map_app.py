"""A Streamlit script for the browser test of a large map: ``CMROPS_LARGE_MAP_N`` (default
100,000) clustered points drawn by the Map page's own figure (dashboards/mapplot.py), with the
same selection wiring - only the 100k-sample project is replaced by generated coordinates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dashboards.mapplot import figure, selected_rows

n = int(os.environ.get("CMROPS_LARGE_MAP_N", "100000"))
rng = np.random.default_rng(0)
centres = rng.normal(scale=8.0, size=(30, 2))
which = rng.integers(0, 30, n)
xy = centres[which] + rng.normal(size=(n, 2))
frame = pd.DataFrame({
    "sample_id": [f"{i:016x}" for i in range(n)], "x": xy[:, 0], "y": xy[:, 1],
    "caption": [f"sample {i} of cluster {c}" for i, c in enumerate(which)],
    "label": [f"cluster {c}" for c in which],
})  # fmt: skip
st.title("Large map")
event = st.plotly_chart(figure(frame, "label"), key="map_chart", on_select="rerun",
                        selection_mode=("lasso", "box", "points"))  # fmt: skip
st.markdown(f"**{len(selected_rows(event))} selected** of {n}")
