"""Properties that must hold for every input: the time grid, the scale invariance of the rank
decision, and the dtypes of the products a problem returns."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lowrank_integrators as lri
from lowrank_integrators.solve import MAX_STEPS, step_times
from lowrank_integrators.truncation import tail_norms
from tests.problems_for_tests import orthonormal

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)

# --- the time grid ----------------------------------------------------------------------------

starts = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    st.integers(-40, 40).map(lambda k: math.copysign(2.0 ** abs(k), k)),
)
steps = st.floats(1e-4, 10.0, allow_nan=False)


@SETTINGS
@given(starts, steps, st.floats(0.5, 3000.0))
def test_every_step_is_positive_and_the_last_ends_exactly_at_t1(t0, h, n_steps):
    t1 = t0 + n_steps * h
    assume(t1 > t0 and (t1 - t0) / h <= 5000)
    times = step_times(t0, t1, h)
    assert times[0] == t0 and times[-1] == t1
    widths = np.diff(times)
    assert np.all(widths > 0)
    # every step is h up to the round-off of the times; only the last may be shorter
    slack = 16 * np.finfo(float).eps * max(abs(t0), abs(t1))
    assert np.all(widths <= h + slack)
    assert np.all(widths[:-1] >= h - slack)
    n = len(widths)
    assert n == 1 or (n - 1) * h < (t1 - t0) + n * slack  # no step too many


@pytest.mark.parametrize("t0", [0.0, 2.0**19, -(2.0**30), 1e6 + 0.1])
def test_a_span_of_one_step_far_from_zero_is_one_step(t0):
    h = 1e-3
    times = step_times(t0, t0 + h, h)
    assert len(times) == 2 and times[-1] == t0 + h


def test_far_from_zero_the_h_scaled_tolerance_keeps_the_rank():
    """A sliver step of length 0 made the h-scaled tolerance 0 and the rank jump."""
    rng = np.random.default_rng(4)
    n = 20
    W = rng.standard_normal((n, n))
    problem = lri.SylvesterODE((W - W.T) / 2, None, rng.standard_normal((n, n)))
    Y0 = lri.LowRankMatrix.from_dense(rng.standard_normal((n, n)), rank=3)
    method = lri.ParallelBUG(lri.Tolerance(1e-2, scale_with_h=True))
    t0, h = 2.0**19, 1e-3
    near = lri.solve(problem, Y0, (0.0, h), h, method=method)
    far = lri.solve(problem, Y0, (t0, t0 + h), h, method=method)
    assert far.stats.n_steps == 1
    assert far.Y.rank == near.Y.rank


@pytest.mark.parametrize("h", [5e-324, 1e-13])
def test_more_steps_than_the_limit_is_an_error_before_any_work(h):
    Y0 = lri.LowRankMatrix.from_dense(np.eye(4), rank=2)
    with pytest.raises(ValueError, match=f"limit of {MAX_STEPS:,} steps"):
        lri.solve(lri.SylvesterODE(np.eye(4)), Y0, (0.0, 1.0), h)


def test_a_step_below_the_resolution_of_the_times_is_an_error():
    with pytest.raises(ValueError, match="resolution"):
        step_times(1e10, 1e10 + 1e-3, 1e-9)


# --- scale invariance of the rank decision ----------------------------------------------------

spectra = arrays(
    np.float64, st.integers(1, 10), elements=st.floats(1e-3, 1e3, allow_subnormal=False)
).map(lambda s: np.sort(s)[::-1])
powers = st.integers(-1000, 1000)


def scaled(sigma, k):
    with np.errstate(over="ignore", under="ignore"):
        s = sigma * 2.0**k if abs(k) < 1000 else np.ldexp(sigma, k)
    assume(np.all(np.isfinite(s)) and np.all(s >= np.finfo(float).tiny))
    return s


@SETTINGS
@given(spectra, st.floats(0.0, 1.0), powers, st.sampled_from(["frobenius", "sum"]))
def test_scaling_sigma_by_a_power_of_two_keeps_the_relative_rank(sigma, theta, k, tail):
    s = scaled(sigma, k)
    rule = lri.Tolerance(theta, relative=True, tail=tail)
    assert rule.select_rank(s, 1.0) == rule.select_rank(sigma, 1.0)


@SETTINGS
@given(spectra, st.floats(0.0, 1e3), powers)
def test_scaling_sigma_and_theta_by_a_power_of_two_keeps_the_absolute_rank(sigma, theta, k):
    s = scaled(sigma, k)
    theta_k = float(np.ldexp(theta, k))
    assume(math.isfinite(theta_k) and (theta == 0 or theta_k >= np.finfo(float).tiny))
    assert lri.Tolerance(theta_k).select_rank(s, 1.0) == lri.Tolerance(theta).select_rank(
        sigma, 1.0
    )


def test_huge_and_tiny_singular_values_are_neither_overflowed_nor_underflowed():
    assert lri.Tolerance(0.5, relative=True).select_rank(np.array([1e154, 1e154]), 1.0) == 2
    assert lri.Tolerance(0.0).select_rank(np.array([1.0, 1e-162]), 1.0) == 2
    assert lri.Tolerance(0.0, rmin=1).select_rank(np.array([1e-200, 1e-300]), 1.0) == 2
    np.testing.assert_allclose(tail_norms(np.array([3e200, 4e200]))[0], 5e200, rtol=1e-15)


# --- dtypes of products -----------------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]


def safe(src, dst) -> bool:
    return np.result_type(src, dst) == np.dtype(dst)


def to(X, dtype):
    """``X`` in ``dtype`` (its real part for a real dtype)."""
    if not np.issubdtype(dtype, np.complexfloating):
        X = X.real
    return X.astype(dtype)


class ConstantField(lri.MatrixODE):
    """``F = C``, every product computed in the dtype ``product`` and returned in ``returned``
    (default: ``product``): the values of two such fields agree and only their dtypes differ."""

    def __init__(self, C, product, returned=None):
        self.C = to(C, product)
        self.returned = product if returned is None else returned

    def _out(self, X):
        return X.astype(self.returned)

    def apply_right(self, t, Y, V):
        return self._out(self.C @ to(V, self.C.dtype))

    def apply_left(self, t, Y, U):
        return self._out(self.C.conj().T @ to(U, self.C.dtype))

    def project(self, t, Y, U, V):
        return self._out(to(U, self.C.dtype).conj().T @ (self.C @ to(V, self.C.dtype)))


def start(rng, dtype, n=8, r=2):
    complex_ = np.issubdtype(dtype, np.complexfloating)
    U, V = orthonormal(rng, n, r, complex_), orthonormal(rng, n, r, complex_)
    return lri.LowRankMatrix(U.astype(dtype), np.diag([1.0, 0.5]).astype(dtype), V.astype(dtype))


METHODS = {
    "bug": lambda: lri.BUG(),
    "projector_splitting": lambda: lri.ProjectorSplitting(),
    "augmented_bug": lambda: lri.AugmentedBUG(lri.Tolerance(1e-3)),
    "parallel_bug": lambda: lri.ParallelBUG(lri.Tolerance(1e-3)),
    "midpoint_bug": lambda: lri.MidpointBUG(lri.Tolerance(1e-3)),
    "abc_psi": lambda: lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(1e-3)),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("state", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("product", DTYPES, ids=lambda d: np.dtype(d).name)
def test_products_are_cast_safely_into_the_state_or_refused(rng, name, state, product):
    C = rng.standard_normal((8, 8)) + 1j * rng.standard_normal((8, 8))
    Y0 = start(rng, state)
    problem = ConstantField(C, product)
    if not safe(product, state):
        with pytest.raises(TypeError, match="does not cast safely"):
            lri.solve(problem, Y0, (0.0, 0.1), 0.1, method=METHODS[name]())
        return
    sol = lri.solve(problem, Y0, (0.0, 0.1), 0.1, method=METHODS[name]())
    assert all(a.dtype == np.dtype(state) for a in sol.Y)
    # the same run with the same values in the state's own dtype: the cast lost nothing
    own = ConstantField(C, product, returned=state)
    ref = lri.solve(own, Y0, (0.0, 0.1), 0.1, method=METHODS[name]())
    atol = 1e-5 if np.finfo(state).bits == 32 else 1e-12
    np.testing.assert_allclose(sol.Y.to_dense(), ref.Y.to_dense(), rtol=0, atol=atol)


def test_a_real_zero_field_leaves_a_complex_state_unchanged(rng):
    Y0 = start(rng, np.complex128)
    zero = ConstantField(np.zeros((8, 8)), np.float64)
    sol = lri.solve(zero, Y0, (0.0, 1.0), 0.1, method=lri.BUG())
    assert sol.Y.dtype == np.complex128
    np.testing.assert_allclose(sol.Y.to_dense(), Y0.to_dense(), atol=1e-14)


def test_an_integer_product_is_refused(rng):
    Y0 = start(rng, np.float64)
    with pytest.raises(TypeError, match="floating dtype"):
        lri.solve(ConstantField(np.ones((8, 8)), np.int64), Y0, (0.0, 0.1), 0.1)


def test_a_substep_solver_that_returns_complex_values_for_a_real_state_is_refused(rng):
    Y0 = start(rng, np.float64)

    def euler_complex(f, t0, t1, X0):
        return (X0 + (t1 - t0) * f(t0, X0)).astype(np.complex128)

    problem = lri.SylvesterODE(np.eye(8))
    with pytest.raises(TypeError, match=r"substep solver .* does not cast safely"):
        lri.solve(problem, Y0, (0.0, 0.1), 0.1, method=lri.BUG(substep=euler_complex))


def test_a_single_precision_substep_result_is_cast_into_a_double_state(rng):
    Y0 = start(rng, np.float64)

    def euler32(f, t0, t1, X0):
        return (X0 + (t1 - t0) * f(t0, X0)).astype(np.float32)

    problem = lri.SylvesterODE(np.eye(8))
    sol = lri.solve(problem, Y0, (0.0, 0.1), 0.1, method=lri.BUG(substep=euler32))
    assert all(a.dtype == np.float64 for a in sol.Y)
