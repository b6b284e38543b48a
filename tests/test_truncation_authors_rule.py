"""``Tolerance(tail="sum", keep_one_more=True)`` is the truncation of the authors' codes.

The Matlab/Julia codes of Ceruti, Kusch, Lubich (2022, 2024) and Kusch (2024) choose the new
rank with the loop transcribed in :func:`authors_rank`: the first ``j`` whose tail
``sqrt(sum(sigma(j:end)).^2)`` -- the plain sum of ``sigma_j, ..., sigma_p`` -- is below the
tolerance, keeping ``sigma_1, ..., sigma_j``: one more value than the smallest rank that meets
the sum criterion, and ``p`` when no tail is below it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_integrators as lri


def authors_rank(sigma: np.ndarray, tol: float) -> int:
    """The authors' loop, one-based as written there: ``for j = 1:p ... if tmp < tol, break``."""
    p = len(sigma)
    j = p
    for j in range(1, p + 1):
        tmp = np.sqrt(np.sum(sigma[j - 1 :]) ** 2)  # sqrt(sum(sigma(j:end)).^2)
        if tmp < tol:
            break
    return j


def rule(tol: float) -> lri.Tolerance:
    return lri.Tolerance(tol, tail="sum", keep_one_more=True)


spectra = st.lists(
    st.floats(min_value=1e-12, max_value=10.0, allow_nan=False), min_size=1, max_size=12
).map(lambda s: np.array(sorted(s, reverse=True)))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(sigma=spectra, tol=st.floats(min_value=0.0, max_value=20.0, allow_nan=False))
def test_the_option_reproduces_the_authors_loop(sigma, tol):
    assert rule(tol).select_rank(sigma, h=1.0) == authors_rank(sigma, tol)


@pytest.mark.parametrize("k", range(5))
def test_a_tolerance_equal_to_a_tail_is_not_below_it(k):
    """The authors compare strictly: a tail equal to the tolerance does not stop the loop."""
    sigma = np.array([2.0**-i for i in range(5)])  # tails are exact in binary
    tol = float(np.sum(sigma[k:]))
    assert rule(tol).select_rank(sigma, h=1.0) == authors_rank(sigma, tol) == min(k + 2, 5)


def test_it_keeps_one_value_more_than_the_sum_rule():
    sigma = np.array([1.0, 0.1, 0.01, 0.001, 1e-4])
    for tol in (0.5, 0.05, 0.005):
        smallest = lri.Tolerance(tol, tail="sum").select_rank(sigma, h=1.0)
        assert rule(tol).select_rank(sigma, h=1.0) == smallest + 1


def test_it_never_exceeds_the_available_values_nor_the_clamps():
    sigma = np.array([1.0, 0.5, 0.25])
    assert rule(0.0).select_rank(sigma, h=1.0) == 3  # no tail is below 0: keep all
    assert rule(1e-3).select_rank(sigma, h=1.0) == 3  # smallest rank 3 meets it: no fourth value
    clamped = lri.Tolerance(10.0, tail="sum", keep_one_more=True, rmin=2, rmax=2)
    assert clamped.select_rank(sigma, h=1.0) == 2


def test_the_default_rule_is_unchanged_by_the_option():
    sigma = np.array([1.0, 0.3, 0.3, 0.3])
    assert lri.Tolerance(0.55).select_rank(sigma, 1.0) == 1
    assert not lri.Tolerance(0.55).keep_one_more
    assert "keep_one_more" not in repr(lri.Tolerance(0.55))
    assert "keep_one_more=True" in repr(rule(0.55))


def test_keep_one_more_must_be_a_bool():
    with pytest.raises(TypeError, match="keep_one_more must be a bool"):
        lri.Tolerance(0.1, keep_one_more=1)
