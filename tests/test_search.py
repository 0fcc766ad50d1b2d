"""Search library (cmrops/search.py) and the dashboard's Search page (AppTest), on the shared tiny
real run (``dashboard_project``)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cmrops import io as cio
from cmrops.search import (
    CaptionEncoder,
    Catalog,
    ModelCodes,
    SearchError,
    SearchSettings,
    available_models,
    find_model,
    load_model,
    search_caption,
    search_image,
)

REPO = Path(__file__).resolve().parents[1]
SETTINGS = SearchSettings()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Reference Hamming distances of one packed code ``a`` (1, w) to every row of ``b``."""
    x = np.bitwise_xor(a, b).view(np.uint8)
    return np.unpackbits(x, axis=1).sum(axis=1)


@pytest.fixture(scope="module")
def project(dashboard_project: Path) -> Path:
    return dashboard_project


@pytest.fixture(scope="module")
def catalog(project: Path) -> Catalog:
    return Catalog.load(project, SETTINGS)


@pytest.fixture(scope="module")
def model_name(project: Path) -> str:
    return [m for m in available_models(project) if m.kind == "hash"][-1].name


@pytest.fixture(scope="module")
def codes(project: Path, model_name: str) -> ModelCodes:
    return ModelCodes.load(find_model(project, model_name))


@pytest.fixture(scope="module")
def encoder(project: Path, model_name: str) -> CaptionEncoder:
    return CaptionEncoder(project, find_model(project, model_name), SETTINGS)


def test_models_are_the_trained_ones(project: Path) -> None:
    trained = json.loads((project / "metrics/train.json").read_text())["models"]
    models = available_models(project)
    hashing = [m for m in models if m.kind == "hash"]
    assert sorted(m.name for m in hashing) == sorted(trained)
    for m in hashing:
        assert m.name == f"{m.method}-{m.bits}"
        assert (m.model_dir / "model.safetensors").is_file()
    (base,) = (m for m in models if m.kind == "float")  # the aligned float baseline
    assert (base.name, base.bits) == ("aligned-float", 0)
    assert base.label == f"aligned-float (cosine, {base.dim}-d)"
    assert (base.model_dir / "config.json").is_file()
    assert available_models(project / "nowhere") == []


def test_the_aligned_float_baseline_is_searched_by_cosine(project: Path, catalog: Catalog) -> None:
    """Caption → images through the alignment's text head (the path the stored text vectors
    took), ranked by exact cosine similarity; a query image's stored vector → captions."""
    info = find_model(project, "aligned-float")
    codes = ModelCodes.load(info)
    encoder = CaptionEncoder(project, info, SETTINGS)
    samples = cio.read_parquet(project / "data/clean/samples.parquet").to_pydict()
    row_of = dict(zip(samples["sample_id"], samples["feature_row"], strict=True))
    features = np.load(project / "data/interim/features/text.npy")
    stored = np.load(info.codes_dir / "text_database_float.npy")
    single = [(i, s) for i, s in enumerate(catalog.database_ids) if len(catalog.captions[s]) == 1]
    for db_row, sid in single[:3]:
        emb = encoder.text_input(catalog.captions[sid][0])
        assert float(emb[0] @ features[row_of[sid]]) > 0.999
        np.testing.assert_allclose(encoder.encode(catalog.captions[sid][0]),
                                   stored[db_row : db_row + 1], atol=1e-4)  # fmt: skip
    vocab = json.loads((project / "data/labelled/vocabulary.json").read_text())["labels"]
    caption = f"a {vocab[0]} thing"
    k = 9
    res = search_caption(codes, encoder, catalog, caption, k)
    sims = np.load(info.codes_dir / "image_database_float.npy") @ encoder.encode(caption)[0]
    order = np.lexsort((np.arange(len(sims)), -sims))[:k]
    assert [h.sample_id for h in res.hits] == [catalog.database_ids[i] for i in order]
    np.testing.assert_allclose([h.similarity for h in res.hits], sims[order], atol=1e-5)
    assert all(h.distance is None for h in res.hits)
    assert res.hits[0].score.startswith("cosine **")
    sid = catalog.query_ids[0]
    res = search_image(codes, catalog, sid, len(catalog.database_ids))
    sims = np.load(info.codes_dir / "text_database_float.npy") @ codes.image_query[0]
    order = np.lexsort((np.arange(len(sims)), -sims))
    assert [h.sample_id for h in res.hits] == [catalog.database_ids[i] for i in order]


def test_caption_path_reproduces_the_stored_text_codes(
    project: Path, encoder: CaptionEncoder, codes: ModelCodes, catalog: Catalog
) -> None:
    """A database sample with one caption: the typed-caption path gives its stored embedding,
    its stored float head outputs and its stored packed code."""
    samples = cio.read_parquet(project / "data/clean/samples.parquet").to_pydict()
    row_of = dict(zip(samples["sample_id"], samples["feature_row"], strict=True))
    single = [(i, s) for i, s in enumerate(catalog.database_ids) if len(catalog.captions[s]) == 1]
    assert single, "the tiny run should have single-caption samples"
    features = np.load(project / "data/interim/features/text.npy")
    floats = np.load(codes.info.codes_dir / "text_database_float.npy")
    stored = np.load(codes.info.codes_dir / "text_database.npy")
    for db_row, sid in single[:3]:
        caption = catalog.captions[sid][0]
        emb = encoder.text_input(caption)
        assert float(emb[0] @ features[row_of[sid]]) > 0.999
        np.testing.assert_allclose(
            encoder.head(features[row_of[sid]][None]), floats[db_row : db_row + 1], atol=1e-5
        )
        out = encoder.head(emb)
        stable = np.abs(out[0]) > 1e-3  # bits far from the sign threshold must agree
        bits = np.unpackbits(encoder.encode(caption).view(np.uint8), bitorder="little")
        ref = np.unpackbits(stored[db_row : db_row + 1].view(np.uint8), bitorder="little")
        n = codes.info.bits
        assert np.array_equal(bits[:n][stable], ref[:n][stable])


def test_caption_search_is_exact_and_labels_relevance(
    encoder: CaptionEncoder, codes: ModelCodes, catalog: Catalog, project: Path
) -> None:
    vocab = json.loads((project / "data/labelled/vocabulary.json").read_text())["labels"]
    caption = f"  a {vocab[0]} thing beside a {vocab[-1]} one  "
    k = 7
    res = search_caption(codes, encoder, catalog, caption, k)
    assert res.direction == "text_to_image"
    assert res.query == caption.strip()
    assert res.query_labels == {vocab[0], vocab[-1]}
    assert len(res.hits) == k
    ref = hamming(encoder.encode(caption), np.load(codes.info.codes_dir / "image_database.npy"))
    order = np.lexsort((np.arange(len(ref)), ref))[:k]
    assert [h.sample_id for h in res.hits] == [catalog.database_ids[i] for i in order]
    assert [h.distance for h in res.hits] == ref[order].tolist()
    for h in res.hits:
        assert h.relevant == bool(catalog.labels.get(h.sample_id, frozenset()) & res.query_labels)
        assert h.caption == catalog.captions[h.sample_id][0]
        assert h.image_path is not None
        assert h.image_path.is_file()
    assert res.n_relevant == sum(bool(h.relevant) for h in res.hits)


def test_caption_naming_no_label_has_unknown_relevance(
    encoder: CaptionEncoder, codes: ModelCodes, catalog: Catalog
) -> None:
    res = search_caption(codes, encoder, catalog, "a picture of something", 3)
    assert res.query_labels is None
    assert res.relevance.startswith("unknown")
    assert [h.relevant for h in res.hits] == [None] * 3
    assert res.n_relevant is None


def test_image_search_uses_the_stored_query_code(codes: ModelCodes, catalog: Catalog) -> None:
    labelled = [s for s in catalog.query_ids if catalog.labels.get(s)]
    sid = labelled[0]
    row = catalog.query_ids.index(sid)
    k = len(catalog.database_ids)  # the whole database: every distance checked
    res = search_image(codes, catalog, sid, k)
    assert res.direction == "image_to_text"
    assert res.query_labels == catalog.labels[sid]
    ref = hamming(
        codes.image_query[row : row + 1], np.load(codes.info.codes_dir / "text_database.npy")
    )
    order = np.lexsort((np.arange(len(ref)), ref))
    assert [h.distance for h in res.hits] == ref[order].tolist()
    assert [h.sample_id for h in res.hits] == [catalog.database_ids[i] for i in order]
    assert {h.relevant for h in res.hits} == {True, False}
    for h in res.hits:
        assert h.relevant == bool(
            catalog.labels.get(h.sample_id, frozenset()) & catalog.labels[sid]
        )


def test_bad_queries_say_what_to_do(
    encoder: CaptionEncoder, codes: ModelCodes, catalog: Catalog, project: Path
) -> None:
    with pytest.raises(SearchError, match="empty after normalisation"):
        search_caption(codes, encoder, catalog, " \u200b\t ", 5)
    with pytest.raises(SearchError, match="k must be between 1 and the database size"):
        search_caption(codes, encoder, catalog, "a red star", len(catalog.database_ids) + 1)
    with pytest.raises(SearchError, match="not a query sample"):
        search_image(codes, catalog, catalog.database_ids[0], 3)
    with pytest.raises(SearchError, match="no codes for model 'nope-8'"):
        find_model(project, "nope-8")


def _copy_run(project: Path, dest: Path) -> Path:
    for rel in ("data/codes", "models", "data/interim/features/meta.json"):
        src = project / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def test_damaged_or_missing_files_are_refused_clearly(
    project: Path, model_name: str, tmp_path: Path
) -> None:
    copy = _copy_run(project, tmp_path / "p")
    info = find_model(copy, model_name)
    meta = copy / "data/interim/features/meta.json"
    recorded = json.loads(meta.read_text())
    meta.write_text(json.dumps({**recorded, "text": {"encoder": str(tmp_path / "no-encoder")}}))
    with pytest.raises(SearchError, match=r"no-encoder.*or query by a stored sample"):
        CaptionEncoder(copy, info, SETTINGS)
    weights = info.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(
        SearchError, match=r"model\.safetensors: contents differ.*re-run `cmrops train`"
    ):
        load_model(info)
    (copy / "data/interim/features/meta.json").unlink()
    with pytest.raises(
        SearchError, match=r"features/meta\.json: not found .*query by a stored sample"
    ):
        CaptionEncoder(copy, info, SETTINGS)
    np.save(info.codes_dir / "image_database.npy", np.zeros((2, 1), np.uint64))
    with pytest.raises(SearchError, match="stale or damaged"):
        ModelCodes.load(info)
    base = find_model(copy, "aligned-float")
    np.save(base.codes_dir / "text_database_float.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(SearchError, match="stale or damaged"):
        ModelCodes.load(base)
    weights = base.model_dir / "alignment.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(SearchError, match=r"alignment\.safetensors"):
        CaptionEncoder(copy, base, SETTINGS)
    with pytest.raises(SearchError, match=r"samples\.parquet: not found"):
        Catalog.load(copy, SETTINGS)


def test_settings_follow_the_runs_params() -> None:
    s = SearchSettings.from_params(
        {
            "preprocess": {"caption_max_chars": 50},
            "label": {"keyword": {"plurals": False}},
            "evaluate": {"min_confidence": 0.5},
        }
    )
    assert (s.caption_max_chars, s.keyword_plurals, s.min_confidence) == (50, False, 0.5)
    assert SearchSettings.from_params({}) == SearchSettings()


# --------------------------------------------------------------------------- the Search page

APP = str(REPO / "dashboards" / "app.py")
PAGE = "pages/search.py"


def open_search_page(project: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CMROPS_PROJECT_DIR", str(project))
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Search"]
    return at


def shown_cards(at: Any) -> list[tuple[int, int, bool | None]]:
    """(rank, distance, relevance shown) of each result card, in page order."""
    cards = []
    texts = [m.value for m in at.markdown]
    for i, text in enumerate(texts):
        m = re.fullmatch(r"\*\*#(\d+)\*\* · distance \*\*(\d+)\*\*", text)
        if m:
            mark = texts[i + 1]
            relevant = None if "unknown" in mark else "not relevant" not in mark
            cards.append((int(m.group(1)), int(m.group(2)), relevant))
    return cards


def test_page_searches_a_caption_like_the_library(
    project: Path,
    model_name: str,
    encoder: CaptionEncoder,
    codes: ModelCodes,
    catalog: Catalog,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = open_search_page(project, monkeypatch)
    method, bits = model_name.rsplit("-", 1)
    at.selectbox(key="search_method").set_value(method).run()
    at.selectbox(key="search_bits").set_value(int(bits)).run()
    at.slider(key="search_k").set_value(6).run()
    assert shown_cards(at) == []  # nothing typed yet: a hint, no results
    caption = "two red circles and a blue star"
    at.text_input(key="search_caption").input(caption).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    ref = search_caption(codes, encoder, catalog, caption, 6)
    expected = [(h.rank, h.distance, h.relevant) for h in ref.hits]
    assert shown_cards(at) == expected
    shown_ids = [c.value.split(" · ")[0] for c in at.caption if " · " in c.value]
    assert shown_ids[-6:] == [h.sample_id for h in ref.hits]
    assert any(f"model **{model_name}**" in m.value for m in at.markdown)


def test_page_searches_a_query_image(
    project: Path,
    codes: ModelCodes,
    catalog: Catalog,
    model_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    at = open_search_page(project, monkeypatch)
    method, bits = model_name.rsplit("-", 1)
    at.selectbox(key="search_method").set_value(method).run()
    at.selectbox(key="search_bits").set_value(int(bits)).run()
    at.radio(key="search_mode").set_value("image").run()
    sid = catalog.query_ids[-1]
    at.selectbox(key="search_image").set_value(sid).run()
    at.slider(key="search_k").set_value(4).run()
    assert not at.exception, at.exception
    ref = search_image(codes, catalog, sid, 4)
    assert shown_cards(at) == [(h.rank, h.distance, h.relevant) for h in ref.hits]


def test_page_empty_state_and_clear_errors(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_search_page(tmp_path / "empty", monkeypatch)
    assert any("No trained codes to search yet" in i.value for i in at.info)

    copy = _copy_run(project, tmp_path / "p")
    for rel in ("data/clean/samples.parquet", "data/labelled"):
        src = project / rel
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, copy / rel)
    (copy / "data/interim/features/meta.json").unlink()
    at = open_search_page(copy, monkeypatch)
    at.text_input(key="search_caption").input("a red star").run()
    assert not at.exception, at.exception
    assert any("query by a stored sample" in e.value for e in at.error)
    at.radio(key="search_mode").set_value("image").run()  # image search still works
    assert not at.error
    assert len(shown_cards(at)) == at.slider(key="search_k").value


def test_caption_search_through_a_finetuned_encoder(tmp_path: Path) -> None:
    """A model trained end to end on a (tiny) CLIP: a typed caption goes through the model's
    own tokenizer and text tower and gives the code training stored for that caption."""
    from cmrops import pack_bits
    from cmrops.models import HasherConfig, PairedData, TrainConfig, encode, fit
    from cmrops.models.finetune import tokenize_captions, weights_sha256
    from cmrops.models.synthetic import synthetic_images
    from tests.tiny_models import tiny_clip

    clip = tiny_clip(tmp_path / "tiny-clip", image_size=32)
    images, captions, labels = synthetic_images(24, 32, 0)
    data = PairedData(images, tokenize_captions(clip, captions), labels)
    config = HasherConfig(
        16, 16, 16, (32,), 0.0, encoder=str(clip), encoder_layers=1,
        encoder_sha256=weights_sha256(str(clip)),
    )  # fmt: skip
    project = tmp_path / "p"
    train = TrainConfig("dcmh", epochs=2, batch_size=8, patience=0, checkpoint_every=0)
    result = fit(config, train, data, None, project / "models/dcmh-16", device="cpu",
                 progress=False)  # fmt: skip
    _, text_out = encode(result.model, data)
    codes = project / "data/codes/dcmh-16"
    codes.mkdir(parents=True)
    meta = {"stage": "train", "method": "dcmh", "bits": 16, "model_dir": "models/dcmh-16",
            "n_query": 4, "n_database": 20}  # fmt: skip
    (codes / "meta.json").write_text(json.dumps(meta))

    encoder = CaptionEncoder(project, find_model(project, "dcmh-16"), SETTINGS)
    assert encoder.encoder_name == str(clip)
    for i in (0, 7, 23):
        out = encoder.head(encoder.text_input(captions[i]))
        np.testing.assert_allclose(out, text_out[i : i + 1], atol=1e-5)
        got = np.unpackbits(encoder.encode(captions[i]).view(np.uint8), bitorder="little")[:16]
        want = np.unpackbits(pack_bits(text_out[i : i + 1] > 0).view(np.uint8), bitorder="little")
        stable = np.abs(text_out[i]) > 1e-4  # a bit this close to 0 may flip in float rounding
        assert np.array_equal(got[stable], want[:16][stable])


@pytest.mark.parametrize("media", ["video", "audio"])
def test_search_a_video_or_audio_project(media: str, request: pytest.FixtureRequest) -> None:
    """The generated video-text / audio-text run (tests/media_project.py): a caption finds the
    database videos or clips, a query item's stored code finds captions, every hit names its
    media file, and directions are named by the media."""
    from cmrops import report

    project = request.getfixturevalue(f"{media}_project")
    catalog = Catalog.load(project, SETTINGS)
    assert catalog.media == media
    info = find_model(project, "dcmh-16")
    codes = ModelCodes.load(info)
    encoder = CaptionEncoder(project, info, SETTINGS)
    caption = catalog.caption_of(catalog.query_ids[0])
    by_caption = search_caption(codes, encoder, catalog, caption, 5)
    assert (by_caption.direction, by_caption.direction_name) == (
        "text_to_image",
        f"text_to_{media}",
    )
    by_item = search_image(codes, catalog, catalog.query_ids[0], 5)
    assert (by_item.direction, by_item.direction_name) == ("image_to_text", f"{media}_to_text")
    for result in (by_caption, by_item):
        assert result.media == media
        assert len(result.hits) == 5
        distances = [h.distance for h in result.hits]
        assert distances == sorted(distances)
        for h in result.hits:
            assert h.sample_id in catalog.database_ids
            assert h.image_path is not None
            assert h.image_path.is_file()
    hit = by_caption.hits[0]
    shown = report.preview(project, hit.sample_id, hit.image_path, media)
    assert shown.error is None
    assert shown.mime == ("image/jpeg" if media == "video" else "audio/wav")
