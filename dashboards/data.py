"""Cached loaders for the dashboard pages: thin ``st.cache_data`` wrappers over
:mod:`cmrops.report` (plain functions over the project's files).

Every table is cached under the project's *stamp* (path, mtime, size of each pipeline output,
:func:`cmrops.report.stamp`), so a new run shows on the next rerun without a restart. Images are
content-addressed (``data/raw/objects/<sha[:2]>/<sha>``), so thumbnails are cached by path; a
video's keyframe strip also by the mtime of ``thumbs.parquet``; audio clips are read (bounded)
on each render, not cached, so the cache never holds megabytes of sound.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from cmrops import answers, drilldown, embedmap, release_view, releases, report, review_items
from cmrops.answers import AnswerLogError
from cmrops.embedmap import MapError
from cmrops.report import Preview, ReportError, Thumbnail
from cmrops.review_items import ReviewItemsError

__all__ = ["PAGE_ERRORS", "PROJECT_ENV", "Preview", "ReportError", "Thumbnail", "project_dir"]

#: Errors a page shows as an error box saying what to rerun (a damaged or half-written output).
PAGE_ERRORS = (ReportError, ReviewItemsError, MapError, AnswerLogError, releases.ReleaseError)

#: Environment variable naming the project folder shown (default: the current directory).
PROJECT_ENV = "CMROPS_PROJECT_DIR"


def project_dir() -> Path:
    """The project (its workspace): ``$CMROPS_PROJECT_DIR``, else the current directory."""
    return Path(os.environ.get(PROJECT_ENV, "").strip() or ".").resolve()


#: Session key of the release picker (app.py's sidebar); its value is a release id or WORKSPACE.
RELEASE_KEY = "release"
WORKSPACE = "workspace"


def release_list(project: Path) -> list[Any]:
    """The project's releases on this machine, oldest first (:mod:`cmrops.releases`)."""
    reg = Path(project) / releases.REGISTRY
    try:
        stamp = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in reg.iterdir()))
    except OSError:
        stamp = ()
    return list(_release_list(str(project), stamp))


@st.cache_data(show_spinner=False, max_entries=8)
def _release_list(project: str, stamp: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        return tuple(releases.list_releases(Path(project), include_remote=False))
    except releases.ReleaseError:
        return ()


def shown_view(project: Path | None = None) -> release_view.ReleaseView:
    """The release the pages show (the sidebar's pick; the latest by default) as a folder."""
    project = project or project_dir()
    listed = release_list(project)
    pick = st.session_state.get(RELEASE_KEY)
    rel = None
    if pick != WORKSPACE and listed:
        rel = next((r for r in listed if r.id == pick), listed[-1])
    lock = Path(project) / "dvc.lock"
    return _view(str(project), rel.id if rel else None, _file_stamp(lock))


@st.cache_resource(show_spinner=False, max_entries=16)
def _view(project: str, release_id: str | None, stamp: tuple[Any, ...]) -> Any:
    rel = None
    if release_id is not None:
        rel = next(r for r in release_list(Path(project)) if r.id == release_id)
    return release_view.view(Path(project), rel)


def shown_dir() -> Path:
    """The folder the pages read: the workspace, or the view of the release picked."""
    return shown_view().folder


def trends(project: Path) -> dict[str, pd.DataFrame]:
    listed = release_list(project)
    return _trends(str(project), tuple(r.id for r in listed))


@st.cache_data(show_spinner=False, max_entries=8)
def _trends(project: str, ids: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    return release_view.trends(release_list(Path(project)))


@st.cache_data(show_spinner=False, max_entries=256)
def _report(name: str, project: str, stamp: tuple[Any, ...], args: tuple[Any, ...]) -> Any:
    return getattr(report, name)(Path(project), *args)


def _load(name: str, project: Path, *args: Any) -> Any:
    return _report(name, str(project), report.stamp(project), args)


def missing(project: Path, *keys: str) -> list[str]:
    """Which of these outputs (keys of :data:`cmrops.report.FILES`) are absent (not cached)."""
    return report.missing(project, keys)


def funnel(project: Path) -> pd.DataFrame:
    return _load("funnel", project)


def headline(project: Path) -> dict[str, Any]:
    return _load("headline", project)


def latest_run(project: Path) -> dict[str, Any]:
    return _load("latest_run", project)


def quarantine(project: Path) -> pd.DataFrame:
    return _load("quarantine", project)


def quarantine_counts(project: Path) -> pd.DataFrame:
    return _load("quarantine_counts", project)


def clean_rules(project: Path) -> pd.DataFrame:
    return _load("clean_rules", project)


def caption_lengths(project: Path) -> pd.DataFrame:
    return _load("caption_lengths", project)


def image_sizes(project: Path) -> pd.DataFrame:
    return _load("image_sizes", project)


def durations(project: Path) -> pd.DataFrame:
    return _load("durations", project)


def media_of(project: Path) -> str:
    return _load("media_of", project)


def label_counts(project: Path) -> pd.DataFrame:
    return _load("label_counts", project)


def label_sources(project: Path) -> pd.DataFrame:
    return _load("label_sources", project)


def label_agreement(project: Path) -> dict[str, pd.DataFrame]:
    return _load("label_agreement", project)


def review_queue(project: Path) -> pd.DataFrame:
    return _load("review_queue", project)


def split_sizes(project: Path) -> pd.DataFrame:
    return _load("split_sizes", project)


def split_balance(project: Path) -> pd.DataFrame:
    return _load("split_balance", project)


def leakage(project: Path) -> dict[str, Any]:
    return _load("leakage", project)


def model_names(project: Path) -> list[str]:
    return _load("model_names", project)


def retrieval_table(project: Path) -> pd.DataFrame:
    return _load("retrieval_table", project)


def curves(project: Path, kind: str) -> pd.DataFrame:
    return _load("curves", project, kind)


def history(project: Path) -> pd.DataFrame:
    return _load("history", project)


def code_health(project: Path) -> pd.DataFrame:
    return _load("code_health", project)


def bit_stats(project: Path, model: str, modality: str) -> dict[str, Any]:
    return _load("bit_stats", project, model, modality)


def preview(
    project: Path, sample_id: str | None, path: str | None, media: str, max_side: int = 160
) -> Preview:
    """:func:`cmrops.report.preview` of one sample: pictures cached, audio read each time."""
    if media == "audio":
        return report.preview(project, sample_id, path, media, max_side)
    stamp: tuple[int, ...] = ()
    if media == "video":  # strips live in one table that a preprocess rerun rewrites
        try:
            fs = (Path(project) / report.FILES["thumbs"][0]).stat()
            stamp = (fs.st_mtime_ns, fs.st_size)
        except OSError:
            pass
    return _preview(str(project), sample_id, path, media, max_side, stamp)


@st.cache_data(show_spinner=False, max_entries=1024)
def _preview(
    project: str,
    sample_id: str | None,
    path: str | None,
    media: str,
    max_side: int,
    stamp: tuple[int, ...],
) -> Preview:
    return report.preview(Path(project), sample_id, path, media, max_side)


# ---------------------------------------------------------------------------------------------
# Search page loaders (owned with dashboards/pages/search.py; the logic is cmrops/search.py).
# Keyed by the project folder and the mtime of the files they read, so a retrain shows up.

from cmrops import search  # noqa: E402 - this block's own import, kept with the block


def _search_stamp(*paths: Path) -> tuple[int, ...]:
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)


def search_settings(project: str) -> search.SearchSettings:
    """Caption length cap, keyword plurals and min label confidence from the run's params."""
    from cmrops.params import ParamsError, read_yaml

    try:
        return search.SearchSettings.from_params(read_yaml(Path(project) / "params.yaml"))
    except (ParamsError, TypeError, ValueError):
        return search.SearchSettings()


def search_models(project: str) -> list[search.ModelInfo]:
    codes = Path(project) / search.CODES_DIR
    return _search_models(project, _search_stamp(codes, codes / "rows.parquet"))


@st.cache_data(show_spinner=False)
def _search_models(project: str, stamp: tuple[int, ...]) -> list[search.ModelInfo]:
    return search.available_models(project)


def search_catalog(project: str) -> search.Catalog:
    root = Path(project)
    files = (root / search.CODES_DIR / "rows.parquet", root / search.CLEAN_SAMPLES,
             root / search.LABELLED_DIR / "labels.parquet", root / "params.yaml")  # fmt: skip
    return _search_catalog(project, _search_stamp(*files))


@st.cache_resource(show_spinner=False, max_entries=2)
def _search_catalog(project: str, stamp: tuple[int, ...]) -> search.Catalog:
    return search.Catalog.load(project, search_settings(project))


def search_codes(project: str, name: str) -> search.ModelCodes:
    info = search.find_model(project, name)
    return _search_codes(project, name, _search_stamp(info.codes_dir / "meta.json"))


@st.cache_resource(show_spinner=False, max_entries=8)
def _search_codes(project: str, name: str, stamp: tuple[int, ...]) -> search.ModelCodes:
    return search.ModelCodes.load(search.find_model(project, name))


def search_caption_encoder(project: str, name: str) -> search.CaptionEncoder:
    info = search.find_model(project, name)
    stamp = _search_stamp(
        info.model_dir / "state.json",  # a hashing model's checkpoint
        info.model_dir / "config.json",  # (the aligned float baseline has only this)
        Path(project) / search.FEATURES_META,
    )
    return _search_caption_encoder(project, name, stamp)


@st.cache_resource(show_spinner=False, max_entries=4)
def _search_caption_encoder(
    project: str, name: str, stamp: tuple[int, ...]
) -> search.CaptionEncoder:
    info = search.find_model(project, name)
    return search.CaptionEncoder(project, info, search_settings(project))


# ----------------------------------------------------------------------- end of Search loaders


# ---------------------------------------------------------------------------------------------
# Drill-down, review and map loaders (logic: cmrops/drilldown.py, review_items.py, answers.py,
# embedmap.py).


def drill(project: Path, what: str, value: Any) -> pd.DataFrame:
    """The samples behind one count (:func:`cmrops.drilldown.samples`)."""
    return _drill(str(project), report.stamp(project), what, value)


@st.cache_data(show_spinner=False, max_entries=64)
def _drill(project: str, stamp: tuple[Any, ...], what: str, value: Any) -> pd.DataFrame:
    return drilldown.samples(Path(project), what, value)


@st.cache_data(show_spinner=False, max_entries=64)
def table_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    return drilldown.to_bytes(df, fmt)


def _file_stamp(*paths: Path) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st_ = p.stat()
            out.append((st_.st_mtime_ns, st_.st_size))
        except OSError:
            out.append((0, -1))
    return tuple(out)


def review_file(project: Path, kind: str, selection: tuple[str, ...] | None = None) -> Path | None:
    """The built items file of a review kind (:func:`cmrops.review_items.build`), or None."""
    stamp = _file_stamp(*(Path(project) / rel for rel in review_items.INPUTS[kind]))
    return _review_file(str(project), kind, selection, stamp)


@st.cache_data(show_spinner=False, max_entries=32)
def _review_file(
    project: str, kind: str, selection: tuple[str, ...] | None, stamp: tuple[Any, ...]
) -> Path | None:
    return review_items.build(Path(project), kind, selection)


@st.cache_data(show_spinner=False, max_entries=16)
def review_light(path: Path) -> pd.DataFrame:
    """pos, sample_id, reason, doubt of a built items file (its name holds its inputs' key)."""
    return review_items.light(path).to_pandas()


@st.cache_data(show_spinner=False, max_entries=256)
def review_page(path: Path, positions: tuple[int, ...]) -> list[dict[str, Any]]:
    return review_items.page(path, positions)


def answer_log_path(project: Path) -> Path:
    return Path(project) / answers.DEFAULT_PATH


@st.cache_resource(show_spinner=False, max_entries=8)
def _answer_index(path: str) -> answers.AnswerIndex:
    return answers.AnswerIndex(path)


def answer_index(project: Path) -> answers.AnswerIndex:
    """The project's answer log, held in memory and refreshed with what was appended since."""
    return _answer_index(str(answer_log_path(project))).refresh()


def merge_states(project: Path) -> dict[str, answers.MergeState]:
    """How far label and clean merged the answer log (:func:`cmrops.answers.merge_state`)."""
    log = answer_log_path(project)
    files = {"label": Path(project) / "data/labelled" / answers.MERGED_FILE,
             "clean": Path(project) / "data/clean" / answers.MERGED_FILE}  # fmt: skip
    stamp = _file_stamp(log, *files.values())
    return _merge_states(str(log), tuple((k, str(v)) for k, v in files.items()), stamp)


@st.cache_data(show_spinner=False, max_entries=16)
def _merge_states(
    log: str, files: tuple[tuple[str, str], ...], stamp: tuple[Any, ...]
) -> dict[str, answers.MergeState]:
    return {stage: answers.merge_state(stage, Path(f), Path(log)) for stage, f in files}


def vocabulary(project: Path) -> list[str]:
    """The label vocabulary (``data/labelled/vocabulary.json``), [] before label ran."""
    p = Path(project) / "data/labelled/vocabulary.json"
    return list(_vocabulary(str(p), _file_stamp(p)))


@st.cache_data(show_spinner=False, max_entries=8)
def _vocabulary(path: str, stamp: tuple[Any, ...]) -> tuple[str, ...]:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ()
    except (OSError, ValueError) as e:
        raise ReportError(f"{path} cannot be read ({e}); rerun `cmrops label`") from e
    return tuple(str(x) for x in data.get("labels") or ())


def sample_map(project: Path, method: str, modality: str, seed: int = 0) -> embedmap.SampleMap:
    """The embedding map (:func:`cmrops.embedmap.sample_map`), once per data version."""
    feats = Path(project) / "data/interim/features" / f"{modality}.npy"
    samples = Path(project) / "data/interim/samples.parquet"
    return _sample_map(str(project), method, modality, seed, _file_stamp(feats, samples))


@st.cache_resource(show_spinner=False, max_entries=8)
def _sample_map(
    project: str, method: str, modality: str, seed: int, stamp: tuple[Any, ...]
) -> embedmap.SampleMap:
    return embedmap.sample_map(Path(project), method, seed, modality)


def map_cached(project: Path, method: str, modality: str, seed: int = 0) -> bool:
    """Whether this data version's map by ``method`` was computed before (no computing)."""
    feats = Path(project) / "data/interim/features" / f"{modality}.npy"
    samples = Path(project) / "data/interim/samples.parquet"
    path = _map_path(str(project), method, modality, seed, _file_stamp(feats, samples))
    return path.is_file()


@st.cache_data(show_spinner=False, max_entries=32)
def _map_path(project: str, method: str, modality: str, seed: int, stamp: tuple[Any, ...]) -> Path:
    return embedmap.cache_path(Path(project), method, seed, modality)


def map_attributes(project: Path, sample_ids: tuple[str, ...]) -> pd.DataFrame:
    return _map_attributes(str(project), report.stamp(project), sample_ids)


@st.cache_data(show_spinner=False, max_entries=8)
def _map_attributes(
    project: str, stamp: tuple[Any, ...], sample_ids: tuple[str, ...]
) -> pd.DataFrame:
    return embedmap.attributes(Path(project), sample_ids)
