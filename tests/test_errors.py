"""The one redaction function, URL credential splitting, and the one-line errors."""

from __future__ import annotations

import errno

import pytest

from cmrops.errors import NothingKeptError, os_error_line
from cmrops.redaction import redact, redact_url, split_credentials


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:pw@127.0.0.1:9091", "http://***@127.0.0.1:9091"),
        (
            "at https://token@host/x?y=1 and s3://bucket/k",
            "at https://***@host/x?y=1 and s3://bucket/k",
        ),
        ("HTTP://U:P%40ss@h/p", "HTTP://***@h/p"),
        ("http://a:b@c@d/e", "http://***@d/e"),  # an unescaped @ in the password: all of it
        ("'url': 'webdavs://me:x@dav.example/dvc'", "'url': 'webdavs://***@dav.example/dvc'"),
        ("mail me@example.com, git@github.com:o/r", "mail me@example.com, git@github.com:o/r"),
        ("http://host/path@v2", "http://host/path@v2"),  # an @ after the host is no userinfo
    ],
)
def test_redact_masks_userinfo_and_nothing_else(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown  # idempotent


def test_split_credentials() -> None:
    assert split_credentials("http://us%40er:p%3Aw@127.0.0.1:9091/x") == (
        "http://127.0.0.1:9091/x", "us@er", "p:w",
    )  # fmt: skip
    assert split_credentials("https://tok@h") == ("https://h", "tok", None)
    assert split_credentials("http://h:1/") == ("http://h:1/", None, None)
    assert redact_url(None) == ""


def test_nothing_kept_lists_counts_by_reason_and_examples() -> None:
    e = NothingKeptError(
        "collect", 5, {"a_reason": 1, "b_reason": 4},
        {"b_reason": "src:http://u:secret@h/x: refused", "a_reason": "src:k: bad"},
    )  # fmt: skip
    assert isinstance(e, ValueError)  # the CLI's one-line, exit-2 path
    assert str(e).startswith(
        "collect kept no sample: all 5 inputs were quarantined (b_reason 4, a_reason 1); e.g. "
    )
    assert "secret" not in str(e)
    assert str(NothingKeptError("preprocess", 0, {})) == (
        "preprocess: no input samples, nothing to pass on"
    )


def test_os_error_line_finds_errno_and_path_through_the_chain() -> None:
    try:
        try:  # pyarrow's way: the errno only in the text, no filename
            raise OSError("Error writing bytes to file. Detail: [errno 28] No space left on device")
        except OSError as inner:
            raise OSError(None, str(inner), "data/raw/samples.parquet") from inner
    except OSError as e:
        line = os_error_line(e)
    assert line.startswith("No space left on device: data/raw/samples.parquet - free space")
    assert "rerun" in line
    ro = os_error_line(OSError(errno.EROFS, "Read-only file system"), "data/raw")
    assert ro.startswith("Read-only file system: data/raw - the file system is read-only")
