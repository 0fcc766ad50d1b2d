"""HammingIndex lifecycle, persistence, and every bad-input case naming its argument."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import cmrops


def random_codes(n: int, words: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, words), dtype=np.uint64)


def test_add_remove_and_ids():
    a, b = random_codes(50, 2, 1), random_codes(30, 2, 2)
    index = cmrops.HammingIndex(a)
    assert len(index) == 50
    assert index.n_bits == 128
    index.add(b)  # implicit ids continue the range
    assert len(index) == 80
    np.testing.assert_array_equal(index.ids(), np.arange(80))
    d, i = index.search(b[:5], 1)
    assert d[:, 0].tolist() == [0] * 5
    assert i[:, 0].tolist() == [50, 51, 52, 53, 54]
    assert index.remove(np.array([50, 51, 999], dtype=np.int64)) == 2
    assert len(index) == 78
    _, i = index.search(b[:2], 1)
    assert 50 not in i
    assert 51 not in i
    index.add(random_codes(3, 2, 3), ids=np.array([1000, 2000, 3000], dtype=np.int64))
    assert index.ids()[-3:].tolist() == [1000, 2000, 3000]


def test_search_k_equal_len_returns_everything_sorted():
    codes = random_codes(33, 4)
    d, i = cmrops.HammingIndex(codes).search(codes[:3], 33)
    assert (np.diff(d, axis=1) >= 0).all()
    assert sorted(i[0].tolist()) == list(range(33))


def test_save_load_roundtrip(tmp_path):
    codes = random_codes(1000, 4)
    ids = np.random.default_rng(5).permutation(5000)[:1000].astype(np.int64)
    index = cmrops.HammingIndex(codes, ids=ids)
    path = tmp_path / "index.cmrh"
    index.save(path)
    loaded = cmrops.HammingIndex.load(str(path))
    assert len(loaded) == 1000
    assert loaded.n_bits == 256
    np.testing.assert_array_equal(loaded.ids(), ids)
    for got, want in zip(loaded.search(codes[:20], 7), index.search(codes[:20], 7), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty", "version"])
def test_load_refuses_damaged_files(tmp_path, damage):
    path = tmp_path / "index.cmrh"
    cmrops.HammingIndex(random_codes(100, 1)).save(path)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x10
    elif damage == "foreign":
        raw = bytearray(b"PK\x03\x04 this is a zip file, not an index" * 10)
    elif damage == "empty":
        raw = bytearray()
    elif damage == "version":
        raw[8:12] = (999).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(cmrops.CorruptIndexError) as e:
        cmrops.HammingIndex.load(path)
    assert isinstance(e.value, ValueError)
    assert str(path) in str(e.value)


def test_load_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        cmrops.HammingIndex.load(tmp_path / "nope.cmrh")


CODES = random_codes(20, 2)


@pytest.mark.parametrize(
    ("call", "exc", "arg"),
    [
        (lambda: cmrops.HammingIndex(CODES.astype(np.int64)), TypeError, "codes"),
        (lambda: cmrops.HammingIndex(CODES.tolist()), TypeError, "codes"),
        (lambda: cmrops.HammingIndex(np.asfortranarray(random_codes(8, 3))), ValueError, "codes"),
        (lambda: cmrops.HammingIndex(CODES[:, :1][::2]), ValueError, "codes"),
        (lambda: cmrops.HammingIndex(CODES[0]), ValueError, "codes"),
        (lambda: cmrops.HammingIndex(np.zeros((3, 0), np.uint64)), ValueError, "codes"),
        (lambda: cmrops.HammingIndex(CODES, ids=np.arange(3, dtype=np.int64)), ValueError, "ids"),
        (lambda: cmrops.HammingIndex(CODES, ids=np.zeros(20, dtype=np.int64)), ValueError, "ids"),
        (lambda: cmrops.HammingIndex(CODES, ids=np.arange(20, dtype=np.int32)), TypeError, "ids"),
        (
            lambda: cmrops.HammingIndex(CODES, ids=-np.arange(1, 21, dtype=np.int64)),
            ValueError,
            "ids",
        ),
        (lambda: cmrops.HammingIndex(CODES, n_threads=0), ValueError, "n_threads"),
        (lambda: cmrops.HammingIndex(CODES).add(random_codes(3, 1)), ValueError, "codes"),
        (
            lambda: cmrops.HammingIndex(CODES).add(
                random_codes(3, 2), ids=np.array([1, 2, 3], np.int64)
            ),
            ValueError,
            "ids",
        ),
        (lambda: cmrops.HammingIndex(CODES).search(random_codes(3, 1), 1), ValueError, "queries"),
        (
            lambda: cmrops.HammingIndex(CODES).search(CODES.astype(np.float64), 1),
            TypeError,
            "queries",
        ),
        (lambda: cmrops.HammingIndex(CODES).search(CODES, 0), ValueError, "k"),
        (lambda: cmrops.HammingIndex(CODES).search(CODES, -3), ValueError, "k"),
        (lambda: cmrops.HammingIndex(CODES).search(CODES, 21), ValueError, "k"),
        (
            lambda: cmrops.HammingIndex(np.zeros((0, 2), np.uint64)).search(CODES, 1),
            ValueError,
            "empty",
        ),
        (lambda: cmrops.HammingIndex(CODES).range_search(CODES, -1), ValueError, "radius"),
        (lambda: cmrops.HammingIndex(CODES).range_search(CODES, 129), ValueError, "radius"),
        (lambda: cmrops.near_duplicates(CODES, -1), ValueError, "radius"),
        (lambda: cmrops.near_duplicates(CODES, 200), ValueError, "radius"),
        (lambda: cmrops.near_duplicates(CODES, 2, other=random_codes(4, 1)), ValueError, "other"),
        (lambda: cmrops.near_duplicates(CODES.view(np.int64), 2), TypeError, "codes"),
        (
            lambda: cmrops.duplicate_groups(np.asfortranarray(random_codes(8, 3)), 1),
            ValueError,
            "codes",
        ),
        (
            lambda: cmrops.hamming_histogram(
                CODES, random_codes(5, 1), np.zeros(20, np.int64), np.zeros(5, np.int64)
            ),
            ValueError,
            "database",
        ),
        (
            lambda: cmrops.hamming_histogram(
                CODES, CODES, np.zeros(3, np.int64), np.zeros(20, np.int64)
            ),
            ValueError,
            "query_labels",
        ),
        (lambda: cmrops.pack_bits(np.array([[0, 2, 1]])), ValueError, "bits"),
        (lambda: cmrops.pack_bits(np.ones(5)), ValueError, "bits"),
        (lambda: cmrops.unpack_bits(CODES, 129), ValueError, "n_bits"),
        (lambda: cmrops.set_simd_path("sse9"), ValueError, "sse9"),
    ],
)
def test_bad_input_raises_a_clear_error(call, exc, arg):
    with pytest.raises(exc) as e:
        call()
    assert arg in str(e.value)


def test_index_memory_is_close_to_raw_codes():
    codes = random_codes(100_000, 1)
    index = cmrops.HammingIndex(codes)
    assert index.memory_bytes <= 1.5 * codes.nbytes


def test_gil_is_released_during_search():
    """Another Python thread keeps running while the core searches."""
    db = random_codes(400_000, 4, 7)
    q = random_codes(300, 4, 8)
    index = cmrops.HammingIndex(db, n_threads=1)
    done = threading.Event()
    progress = 0

    def work():
        index.search(q, 10)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        progress += 1
    t.join()
    # With the GIL held for the whole search, this loop could only run in the few switch
    # intervals before the call starts; released, it spins for the full search.
    assert progress > 200_000


def test_simd_paths_reported():
    paths = cmrops.simd_paths()
    assert paths[0] == "portable"
    assert set(paths) <= {"portable", "scalar", "neon", "avx2", "avx512"}
    assert cmrops.get_simd_path() in paths
