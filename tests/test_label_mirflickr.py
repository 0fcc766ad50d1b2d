"""The MIRFlickr-25K annotation folder as a manual label format of the label stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cmrops.benchmark_layouts import MIRFLICKR_CONCEPTS, MIRFLICKR_R1, write_mirflickr_release
from cmrops.labels.manual import LabelFileError, UnknownSampleKeyError, read_statements
from cmrops.stages.label import LabelParams, ManualFile, run
from tests.test_label_stage import S, _labels, write_interim


def _lists(ann: Path) -> dict[str, set[int]]:
    return {f.stem: {int(x) for x in f.read_text().split()} for f in ann.glob("*.txt")
            if f.name != "README.txt"}  # fmt: skip


def test_annotation_folder_gives_each_collected_image_its_labels(tmp_path: Path) -> None:
    ann = write_mirflickr_release(tmp_path, images=30)["annotations"]
    lists = _lists(ann)
    assert len([k for k in lists if not k.endswith("_r1")]) == 24
    assert len([k for k in lists if k.endswith("_r1")]) == len(MIRFLICKR_R1)
    # a folder source rooted at mirflickr/ has source_key im<N>.jpg; 25 of 30 images collected
    samples = [S(f"im{n}.jpg", (f"tags of {n}",)) for n in range(1, 26)]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams(vocabulary=MIRFLICKR_CONCEPTS, auto_methods=("provided",),
                         manual=(ManualFile(str(ann), format="mirflickr"),))  # fmt: skip
    m = run(params, interim, tmp_path / "out", base_dir=tmp_path)
    got = _labels(tmp_path / "out")
    for s in samples:
        n = int(s.key[2:-4])
        want = {c for c in MIRFLICKR_CONCEPTS if n in lists[c]}
        assert got.get(s.sid, set()) == want
    assert samples[0].sid not in got  # image 1 is in no list
    assert m["manual"][str(ann)]["samples"] == 24
    assert len(m["manual"][str(ann)]["sha256"]) == 64
    # the salient lists instead, auto-detected from the folder
    r1 = dataclasses.replace(params, manual=(ManualFile(str(ann), label_column="r1"),))
    run(r1, interim, tmp_path / "out_r1", base_dir=tmp_path)
    for s, labels in _labels(tmp_path / "out_r1").items():
        n = next(int(x.key[2:-4]) for x in samples if x.sid == s)
        assert labels == {c for c in MIRFLICKR_R1 if n in lists[f"{c}_r1"]}


def test_key_pattern_for_a_source_rooted_above_the_image_folder(tmp_path: Path) -> None:
    ann = write_mirflickr_release(tmp_path, images=6)["annotations"]
    got = read_statements(ann, "mirflickr", key_column="mirflickr/im{n}.jpg")
    assert {st.key for st in got} == {f"mirflickr/im{n}.jpg" for n in range(2, 7)}
    samples = [S(f"mirflickr/im{n}.jpg", ("x",)) for n in range(1, 7)]
    interim = write_interim(tmp_path / "interim", samples)
    params = LabelParams(vocabulary=MIRFLICKR_CONCEPTS, manual=(ManualFile(str(ann)),))
    with pytest.raises(UnknownSampleKeyError, match="set key_column"):
        run(params, interim, tmp_path / "out", base_dir=tmp_path)  # default im{n}.jpg: none


def test_bad_annotation_folders_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="annotation folder not found"):
        read_statements(tmp_path / "absent", "mirflickr")
    ann = write_mirflickr_release(tmp_path, images=5)["annotations"]
    (ann / "dog.txt").write_text("3\nim4.jpg\n")
    with pytest.raises(LabelFileError, match=r"dog.txt:2: expected an image number"):
        read_statements(ann, "auto")
    (ann / "dog.txt").write_text("0\n")
    with pytest.raises(LabelFileError, match="positive integer"):
        read_statements(ann, "mirflickr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelFileError, match=r"no <concept>\.txt lists"):
        read_statements(tmp_path / "empty", "mirflickr")
    with pytest.raises(LabelFileError, match="not a file"):
        read_statements(ann / "README.txt", "mirflickr")
    with pytest.raises(LabelFileError, match="'plain'"):
        read_statements(ann, "mirflickr", label_column="strict")
    with pytest.raises(LabelFileError, match="pattern with"):
        read_statements(ann, "mirflickr", key_column="image")


def test_folder_source_reads_mirflickr_tags_as_captions(tmp_path: Path) -> None:
    from cmrops.sources.folder import FolderSource

    folders = write_mirflickr_release(tmp_path, images=4, write_images=True)
    (folders["images"] / "meta" / "tags" / "tags1.txt").write_text("\n")  # an image without tags
    (folders["images"] / "meta" / "tags" / "tags7.txt").write_text("sea\n")  # no im7.jpg
    got = {r.source_key: r for r in FolderSource("mir", folders["images"])}
    assert sorted(got) == ["im1.jpg", "im2.jpg", "im3.jpg", "im4.jpg", "im7.jpg"]
    assert got["im1.jpg"].reason.value == "missing_caption"
    assert got["im7.jpg"].reason.value == "missing_image"
    tags = (folders["images"] / "meta" / "tags" / "tags2.txt").read_text().split()
    assert got["im2.jpg"].captions == (" ".join(tags),)  # the keys the annotation format uses
