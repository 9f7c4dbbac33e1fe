"""Truncation specs: parsing, canonical strings, f(t) against the lecture's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt_cli.core import truncation
from bptt_cli.core.errors import BpttError, InvalidInputError

VALID_FORMS = ("full", "k_truncated:K", "subsequence:K", "tbptt:K1:K2")

HYP = settings(max_examples=200, derandomize=True, deadline=None)


# The lecture's f(t), written out once per mode (independent of tests/reference.py on purpose).
def f_full(t: int) -> int:
    return 0


def f_k(t: int, k: int) -> int:
    return max(0, t - k)


def f_sub(t: int, k: int) -> int:
    return k * (t // k)


def f_tbptt(t: int, k1: int, k2: int) -> int:
    return max(0, k1 * (t // k1) + k1 - k2)


@pytest.mark.parametrize(
    "spec, mode",
    [
        ("full", "full"),
        ("k_truncated:0", "k_truncated"),
        ("k_truncated:5", "k_truncated"),
        ("subsequence:1", "subsequence"),
        ("subsequence:20", "subsequence"),
        ("tbptt:1:1", "tbptt"),
        ("tbptt:5:5", "tbptt"),
        ("tbptt:5:20", "tbptt"),
    ],
)
def test_parse_str_round_trip(spec, mode):
    tr = truncation.parse(spec)
    assert str(tr) == spec
    assert tr.mode == mode
    again = truncation.parse(str(tr))
    assert str(again) == spec
    np.testing.assert_array_equal(again.starts(17), tr.starts(17))


@pytest.mark.parametrize(
    "spec, update",
    [
        ("full", "sequence"),
        ("k_truncated:0", "sequence"),
        ("k_truncated:7", "sequence"),
        ("subsequence:3", "chunk"),
        ("tbptt:2:2", "chunk"),
        ("tbptt:2:9", "chunk"),
    ],
)
def test_default_update(spec, update):
    assert truncation.parse(spec).default_update == update


def _check_starts(tr, T, expected):
    got = tr.starts(T)
    assert isinstance(got, np.ndarray)
    assert np.issubdtype(got.dtype, np.integer), got.dtype
    assert got.shape == (T,)
    np.testing.assert_array_equal(got, np.array(expected), err_msg=f"{tr} T={T}")
    # Every window is non-empty and starts inside the sequence: 0 <= f(t) <= t.
    assert np.all(got >= 0) and np.all(got <= np.arange(T))


@HYP
@given(T=st.integers(1, 60))
def test_starts_full(T):
    _check_starts(truncation.parse("full"), T, [f_full(t) for t in range(T)])


@HYP
@given(T=st.integers(1, 60), k=st.integers(0, 70))
def test_starts_k_truncated(T, k):
    _check_starts(truncation.parse(f"k_truncated:{k}"), T, [f_k(t, k) for t in range(T)])


@HYP
@given(T=st.integers(1, 60), k=st.integers(1, 70))
def test_starts_subsequence(T, k):
    _check_starts(truncation.parse(f"subsequence:{k}"), T, [f_sub(t, k) for t in range(T)])


@HYP
@given(T=st.integers(1, 60), k1=st.integers(1, 30), extra=st.integers(0, 40))
def test_starts_tbptt(T, k1, extra):
    k2 = k1 + extra
    _check_starts(truncation.parse(f"tbptt:{k1}:{k2}"), T, [f_tbptt(t, k1, k2) for t in range(T)])


@HYP
@given(T=st.integers(1, 60), k=st.integers(1, 30))
def test_starts_identities(T, k):
    """The issue's identities at the level of windows."""
    full = truncation.parse("full").starts(T)
    np.testing.assert_array_equal(truncation.parse(f"k_truncated:{T - 1 + k - 1}").starts(T), full)
    np.testing.assert_array_equal(truncation.parse(f"subsequence:{T + k - 1}").starts(T), full)
    np.testing.assert_array_equal(
        truncation.parse(f"tbptt:{k}:{k}").starts(T), truncation.parse(f"subsequence:{k}").starts(T)
    )
    np.testing.assert_array_equal(truncation.parse("k_truncated:0").starts(T), np.arange(T))


def test_tbptt_worked_example():
    # K1=2, K2=5: every 2 steps, backprop 5 steps from the chunk's end.
    np.testing.assert_array_equal(truncation.parse("tbptt:2:5").starts(8), [0, 0, 0, 0, 1, 1, 3, 3])


@pytest.mark.parametrize(
    "spec",
    [
        "k_truncated:-1",
        "tbptt:5:2",
        "subsequence:0",
        "foo",
        "k_truncated",
        "full:3",
        "k_truncated:x",
        "",
        "subsequence:-2",
        "subsequence:1.5",
        "tbptt:0:0",
        "tbptt:3",
        "tbptt:1:2:3",
        "subsequence",
    ],
)
def test_bad_specs(spec):
    with pytest.raises(InvalidInputError) as info:
        truncation.parse(spec)
    assert isinstance(info.value, ValueError) and isinstance(info.value, BpttError)
    msg = str(info.value)
    for form in VALID_FORMS:
        assert form in msg, f"message for {spec!r} does not name {form!r}: {msg}"
