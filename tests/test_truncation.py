"""Truncation rules: the chosen rank, the discarded tail and the factors it returns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lowrank_integrators as lri
from lowrank_integrators import _backend as bk
from lowrank_integrators.truncation import tail_norms
from tests.problems_for_tests import orthonormal

spectra = arrays(
    np.float64,
    st.integers(1, 12),
    elements=st.floats(0.0, 10.0, allow_nan=False, allow_subnormal=False),
).map(lambda s: np.sort(s)[::-1])
thetas = st.floats(0.0, 20.0, allow_nan=False)
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


@SETTINGS
@given(spectra, thetas)
def test_discarded_tail_is_within_tolerance_and_rank_is_smallest(sigma, theta):
    rule = lri.Tolerance(theta)
    r1 = rule.select_rank(sigma, h=1.0)
    tails = tail_norms(sigma)
    assert tails[r1] <= theta
    # smallest: dropping one more value would exceed the tolerance
    assert r1 == 0 or tails[r1 - 1] > theta or r1 == rule.rmin


@SETTINGS
@given(spectra, thetas, thetas)
def test_rank_is_monotone_in_the_tolerance(sigma, a, b):
    lo, hi = sorted((a, b))
    assert lri.Tolerance(hi).select_rank(sigma, 1.0) <= lri.Tolerance(lo).select_rank(sigma, 1.0)


@SETTINGS
@given(spectra, thetas, st.integers(1, 6), st.integers(0, 8))
def test_rank_is_clamped_to_rmin_rmax(sigma, theta, rmin, extra):
    rule = lri.Tolerance(theta, rmin=rmin, rmax=rmin + extra)
    r1 = rule.select_rank(sigma, 1.0)
    p = sigma.size
    assert min(rule.rmin, p) <= r1 <= min(rule.rmax, p)


@SETTINGS
@given(spectra, thetas)
def test_truncation_is_idempotent_when_the_kept_values_exceed_the_tolerance(sigma, theta):
    """Re-truncating the output keeps its rank when every kept value is above tau.

    (Without that condition the tail rule is not idempotent: sigma = (1, 0.1, 0.1) with
    tau = 0.12 keeps 2 values, and (1, 0.1) then keeps 1; see the test below.)"""
    rule = lri.Tolerance(theta)
    r1 = rule.select_rank(sigma, 1.0)
    kept = sigma[:r1]
    if r1 and kept[-1] > theta:
        assert rule.select_rank(kept, 1.0) == r1


def test_tail_rule_is_not_idempotent_in_general():
    rule = lri.Tolerance(0.12)
    assert rule.select_rank(np.array([1.0, 0.1, 0.1]), 1.0) == 2
    assert rule.select_rank(np.array([1.0, 0.1]), 1.0) == 1


@SETTINGS
@given(spectra, st.integers(1, 15))
def test_fixed_rank_keeps_min_of_r_and_available_and_is_idempotent(sigma, r):
    rule = lri.FixedRank(r)
    r1 = rule.select_rank(sigma, 1.0)
    assert r1 == min(r, sigma.size)
    assert rule.select_rank(sigma[:r1], 1.0) == r1


def test_tail_includes_the_smallest_singular_value():
    """Off-by-one guard: the tail of j values includes sigma_p."""
    sigma = np.array([1.0, 1e-3, 1e-6])
    assert tail_norms(sigma)[2] == 1e-6
    assert lri.Tolerance(1e-7).select_rank(sigma, 1.0) == 3
    assert lri.Tolerance(1e-6).select_rank(sigma, 1.0) == 2


def test_relative_and_h_scaled_thresholds():
    sigma = np.array([3.0, 4.0, 0.0])[[1, 0, 2]]  # norm 5
    assert lri.Tolerance(0.1, relative=True).tolerance(sigma, 1.0) == pytest.approx(0.5)
    assert lri.Tolerance(0.1, scale_with_h=True).tolerance(sigma, 0.01) == pytest.approx(1e-3)
    assert lri.Tolerance(0.1, scale_with_h=3).tolerance(sigma, 0.1) == pytest.approx(1e-4)


def test_sum_tail_is_stricter_than_frobenius():
    sigma = np.array([1.0, 0.3, 0.3, 0.3])
    fro = lri.Tolerance(0.55).select_rank(sigma, 1.0)
    l1 = lri.Tolerance(0.55, tail="sum").select_rank(sigma, 1.0)
    assert (fro, l1) == (1, 3)


@pytest.mark.parametrize("complex_", [False, True])
def test_truncate_returns_leading_singular_triplets_with_conjugated_right_factor(rng, complex_):
    """V1 = V_hat Q[:, :r1] with Q = Vh^H (not Vh[:, :r1]): checked on a non-symmetric core."""
    k, l, m, n = 5, 4, 12, 9
    U_hat, V_hat = orthonormal(rng, m, k, complex_), orthonormal(rng, n, l, complex_)
    S_hat = rng.standard_normal((k, l)) + (1j * rng.standard_normal((k, l)) if complex_ else 0)
    Y, record = lri.FixedRank(2).truncate(U_hat, S_hat, V_hat, h=1.0)
    P, s, Qh = np.linalg.svd(S_hat)
    best = U_hat @ (P[:, :2] * s[:2]) @ Qh[:2] @ V_hat.conj().T
    np.testing.assert_allclose(Y.to_dense(), best, atol=1e-13)
    np.testing.assert_allclose(np.diag(Y.S), s[:2], rtol=1e-13)
    assert record.rank_before == 4 and record.rank_after == 2
    assert record.tail == pytest.approx(np.linalg.norm(s[2:]))
    full = U_hat @ S_hat @ V_hat.conj().T
    assert np.linalg.norm(full - Y.to_dense()) == pytest.approx(record.tail)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"theta": -1.0}, ValueError, "theta"),
        ({"theta": float("nan")}, ValueError, "theta"),
        ({"theta": "1"}, TypeError, "theta"),
        ({"theta": 1.0, "rmin": -1}, ValueError, "rmin"),
        ({"theta": 1.0, "rmin": 0}, ValueError, "rmin"),
        ({"theta": 1.0, "rmax": 0}, ValueError, "rmax"),
        ({"theta": 1.0, "rmin": 5, "rmax": 3}, ValueError, "rmax"),
        ({"theta": 1.0, "scale_with_h": -2}, ValueError, "scale_with_h"),
        ({"theta": 1.0, "tail": "l2"}, ValueError, "tail"),
    ],
)
def test_tolerance_rejects_bad_parameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lri.Tolerance(**kwargs)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, (), (2, 0)])
def test_fixed_rank_rejects_bad_ranks(bad):
    with pytest.raises((ValueError, TypeError), match="rank"):
        lri.FixedRank(bad)


def numpy_tails(sigma, kind):
    """The tails by whole-array NumPy operations (cumulative sums from the small end)."""
    s = np.asarray(sigma, dtype=float)
    if kind == "sum":
        return np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]])
    scale = float(s.max())
    if scale > 0 and np.isfinite(scale):
        tails = np.maximum(scale * np.sqrt(np.cumsum((s[::-1] / scale) ** 2)[::-1]), s)
    else:
        tails = np.sqrt(np.cumsum(s[::-1] ** 2)[::-1])
    return np.concatenate([tails, [0.0]])


@given(
    arrays(np.float64, st.integers(1, 40), elements=st.floats(0, 1e30)),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from(["frobenius", "sum"]),
)
@settings(max_examples=200, deadline=None)
def test_tails_of_few_values_are_the_whole_array_sums_bit_for_bit(sigma, dtype, kind):
    # up to 32 values the tails are summed in Python floats: the same operations, same order
    sigma = np.sort(sigma)[::-1].astype(dtype)
    expected = numpy_tails(sigma, kind)
    got = tail_norms(sigma, kind)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))


@given(
    arrays(np.float64, st.integers(1, 70), elements=st.floats(1e-30, 1e3)),
    st.sampled_from([np.float32, np.float64]),
    st.floats(0.0, 2.0),
    st.booleans(),
    st.sampled_from([False, True, 2.0]),
    st.sampled_from(["frobenius", "sum"]),
    st.booleans(),
    st.integers(1, 4),
    st.sampled_from([None, 3, 50]),
)
@settings(max_examples=300, deadline=None, derandomize=True)
def test_the_record_of_a_truncation_is_that_of_the_rule_asked_one_question_at_a_time(
    sigma, dtype, theta, relative, scale_with_h, tail, one_more, rmin, rmax
):
    # truncate_core decides rank, tail and threshold in one pass over the singular values;
    # they are those of select_rank, tail_norms and tolerance, bit for bit
    rmax = None if rmax is None else max(rmax, rmin)
    rule = lri.Tolerance(
        theta, relative, scale_with_h, rmin, rmax, tail=tail, keep_one_more=one_more
    )
    core = np.diag(np.sort(sigma)[::-1]).astype(dtype)
    s = bk.svd(core)[1]  # the factorisation truncate_core takes
    _, S1, _, record = rule.truncate_core(core, h=0.3)
    assert record.rank_after == S1.shape[0] == rule.select_rank(s, h=0.3)
    assert record.tail == float(tail_norms(s)[record.rank_after])
    assert record.tolerance == rule.tolerance(s, h=0.3)


def test_a_subclass_of_a_tolerance_decides_by_its_own_select_rank():
    class KeepTwo(lri.Tolerance):
        def select_rank(self, sigma, h, mode=None):
            return 2

    _, S1, _, record = KeepTwo(1e9).truncate_core(np.diag([3.0, 2.0, 1.0]), h=1.0)
    assert S1.shape == (2, 2) and record.rank_after == 2 and record.tail == 1.0
