"""The core under hostile input: results that do not fit in memory, ids at the ends of their
range, and fuzzed arguments. Every case ends in a clear Python exception, never an abort."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cmrops

MAX_ID = 2**63 - 1
ROOT = Path(__file__).resolve().parents[1]


def run_limited(code: str, limit_gib: float = 3.0) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose address space is capped at ``limit_gib``
    (``RLIMIT_AS``, set before cmrops is imported)."""
    prelude = textwrap.dedent(
        f"""
        import resource
        cap = int({limit_gib} * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        import numpy as np, cmrops
        """
    )
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_results_beyond_a_memory_limit_raise_memory_error_and_the_interpreter_survives():
    """30,000 identical codes have 449,985,000 pairs (7.2 GB): under a 3 GiB cap the call
    raises MemoryError naming the size, frees what it held, and the same process then groups
    them (no pair listed), and refuses other results that cannot fit."""
    out = run_limited(
        """
        codes = np.full((30_000, 1), 0x0123456789ABCDEF, np.uint64)
        try:
            cmrops.near_duplicates(codes, 0)
        except MemoryError as e:
            print("near_duplicates:", e)
        groups = cmrops.duplicate_groups(codes, 3)
        print("groups:", int(groups.max()), len(groups))
        pairs = cmrops.near_duplicates(codes[:1000], 0)
        print("small:", len(pairs))
        index = cmrops.HammingIndex(np.arange(20_000, dtype=np.uint64).reshape(-1, 1))
        try:
            index.search(np.zeros((200_000, 1), np.uint64), 20_000)
        except MemoryError as e:
            print("search:", e)
        try:
            index.range_search(np.zeros((20_000, 1), np.uint64), 64)
        except MemoryError as e:
            print("range_search:", e)
        print("alive")
        """
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert "does not fit in memory" in lines["near_duplicates"]
    assert " pairs, " in lines["near_duplicates"]
    assert " GB (" in lines["near_duplicates"]  # the size, named
    assert lines["groups"] == "0 30000"
    assert lines["small"] == str(1000 * 999 // 2)
    assert "search: the distances need 4,000,000,000 x 4 bytes = 16.00 GB" in lines["search"]
    assert "hits" in lines["range_search"]
    assert out.stdout.rstrip().endswith("alive")


def test_max_pairs_refuses_a_larger_result_by_name():
    codes = np.zeros((3000, 1), np.uint64)
    with pytest.raises(ValueError, match=r"max_pairs: .*more than 1000 pairs"):
        cmrops.near_duplicates(codes, 0, max_pairs=1000)
    assert len(cmrops.near_duplicates(codes[:40], 0, max_pairs=780)) == 780
    with pytest.raises(ValueError, match="max_pairs"):
        cmrops.near_duplicates(codes, 0, max_pairs=-1)


def test_the_largest_id_round_trips_and_automatic_ids_run_out_cleanly(tmp_path):
    codes = np.arange(3, dtype=np.uint64).reshape(-1, 1)
    index = cmrops.HammingIndex(codes[:1], ids=np.array([MAX_ID], np.int64))
    assert index.ids().tolist() == [MAX_ID]
    with pytest.raises(ValueError, match=r"ids: no automatic id is left"):
        index.add(codes[1:2])
    assert index.ids().tolist() == [MAX_ID]  # nothing changed
    index.add(codes[1:], ids=np.array([5, MAX_ID - 1], np.int64))
    _, ids = index.search(codes, 1)
    assert ids[:, 0].tolist() == [MAX_ID, 5, MAX_ID - 1]
    index.save(tmp_path / "ix.cmrh")
    back = cmrops.HammingIndex.load(tmp_path / "ix.cmrh")
    assert back.ids().tolist() == [MAX_ID, 5, MAX_ID - 1]

    ranged = cmrops.HammingIndex(codes[:2], ids=np.array([MAX_ID - 2, MAX_ID - 1], np.int64))
    ranged.add(codes[2:])  # the last automatic id there is
    assert ranged.ids().tolist() == [MAX_ID - 2, MAX_ID - 1, MAX_ID]
    with pytest.raises(ValueError, match=r"2\*\*63 - 1"):
        ranged.add(codes[:1])
    ranged.save(tmp_path / "r.cmrh")
    assert cmrops.HammingIndex.load(tmp_path / "r.cmrh").ids().tolist() == ranged.ids().tolist()
    with pytest.raises(ValueError, match="ids"):
        cmrops.HammingIndex(codes[:1], ids=np.array([-1], np.int64))


IDS = st.lists(
    st.one_of(
        st.integers(0, MAX_ID),
        st.sampled_from([0, 1, MAX_ID, MAX_ID - 1, MAX_ID - 2, 2**62, 2**32]),
    ),
    min_size=1,
    max_size=12,
    unique=True,
)


@given(first=IDS, second=IDS, auto=st.integers(0, 3))
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_accepted_id_round_trips(tmp_path, first, second, auto):
    """Whatever ids __init__ and add accept come back unchanged from ids(), search and
    save/load; automatic ids are accepted exactly while they stay within 0..=2**63 - 1."""
    n1, n2 = len(first), len(second)
    codes = np.arange(n1 + n2 + auto, dtype=np.uint64).reshape(-1, 1) * np.uint64(0x0101)
    index = cmrops.HammingIndex(codes[:n1], ids=np.array(first, np.int64))
    want = list(first)
    fresh = [i for i in second if i not in set(first)]
    if fresh:
        index.add(codes[n1 : n1 + len(fresh)], ids=np.array(fresh, np.int64))
        want += fresh
    if auto:
        largest = max(want)
        extra = codes[len(want) : len(want) + auto]
        if largest + auto <= MAX_ID:
            index.add(extra)
            want += list(range(largest + 1, largest + 1 + auto))
        else:
            with pytest.raises(ValueError, match="ids"):
                index.add(extra)
    assert index.ids().tolist() == want
    _, got = index.search(codes[: len(want)], 1)
    assert got[:, 0].tolist() == want  # distinct codes: each finds itself
    path = tmp_path / "ids.cmrh"
    index.save(path)
    back = cmrops.HammingIndex.load(path)
    assert back.ids().tolist() == want
    lims, _, hits = back.range_search(codes[: len(want)], 0)
    assert hits.tolist() == want
    assert lims.tolist() == list(range(len(want) + 1))


# ---------------------------------------------------------------------------------- fuzzing

DTYPES = st.sampled_from([np.uint64, np.int64, np.uint32, np.uint8, np.float64, np.bool_])


@st.composite
def arrays(draw):
    """Small arrays of any dtype, 0-3 dimensions (sides 0-4), sometimes strided, Fortran-ordered
    or misaligned, or not an array at all."""
    kind = draw(st.sampled_from(["array", "strided", "fortran", "misaligned", "list", "none"]))
    if kind == "none":
        return None
    if kind == "list":
        return draw(st.lists(st.integers(0, 9), max_size=4))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    a = draw(hnp.arrays(draw(DTYPES), shape))
    if kind == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=0)[::2]
    elif kind == "fortran":
        a = np.asfortranarray(a)
    elif kind == "misaligned" and a.dtype == np.uint64:
        raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
        a = raw.view(np.uint64).reshape(a.shape) if a.size else a
    return a


INTS = st.one_of(
    st.integers(-3, 70),
    st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63), 2**64, 10**30]),
    st.just(None),
    st.just(2.0),
)
CLEAR = (TypeError, ValueError, MemoryError)


def call(fn, *args, **kwargs):
    """Run a core call; any failure must be one of the clear exception types, with a message."""
    try:
        return fn(*args, **kwargs)
    except CLEAR as e:
        message = str(e)
    if not message:
        raise AssertionError(f"{fn.__name__}: an exception without a message")
    return None


@given(codes=arrays(), other=arrays(), k=INTS, radius=INTS, threads=INTS)
@settings(max_examples=250, deadline=None)
def test_fuzzed_arguments_give_clear_errors(codes, other, k, radius, threads):
    index = call(cmrops.HammingIndex, codes, n_threads=threads if threads != 2.0 else None)
    call(cmrops.near_duplicates, codes, radius, other=other)
    call(cmrops.near_duplicates, codes, radius, max_pairs=k)
    call(cmrops.duplicate_groups, codes, radius, n_threads=threads)
    call(cmrops.hamming_histogram, codes, other, codes, other)
    good = np.zeros((5, 1), np.uint64)
    ix = index or cmrops.HammingIndex(good)
    call(ix.search, other, k)
    call(ix.search, good[:, : ix.n_words] if ix.n_words == 1 else other, k)
    call(ix.range_search, other, radius)
    call(ix.add, other)
    call(ix.add, other, ids=codes)
    call(ix.remove, other)
    call(cmrops.HammingIndex(good).search, good, k)
    call(cmrops.HammingIndex(good).range_search, good, radius)
