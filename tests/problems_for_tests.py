"""Small problems, dense references and closed forms shared by the tests.

Everything here is written with dense NumPy linear algebra, independently of the library's
integrators, so that the tests compare the library against textbook formulas.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.integrate import solve_ivp

import lowrank_integrators as lri


def orthonormal(rng: np.random.Generator, n: int, r: int, complex_: bool = False) -> np.ndarray:
    X = rng.standard_normal((n, r))
    if complex_:
        X = X + 1j * rng.standard_normal((n, r))
    return np.linalg.qr(X)[0]


def random_lowrank(
    rng: np.random.Generator,
    m: int,
    n: int,
    r: int,
    sigmas: np.ndarray | None = None,
    complex_: bool = False,
) -> lri.LowRankMatrix:
    """A rank-r matrix with given singular values and a non-diagonal core."""
    if sigmas is None:
        sigmas = 2.0 ** -np.arange(1, r + 1)
    Q1, Q2 = orthonormal(rng, r, r, complex_), orthonormal(rng, r, r, complex_)
    S = Q1 @ np.diag(sigmas) @ Q2.conj().T
    return lri.LowRankMatrix(orthonormal(rng, m, r, complex_), S, orthonormal(rng, n, r, complex_))


def skew(rng: np.random.Generator, n: int, complex_: bool = False) -> np.ndarray:
    R = rng.random((n, n))
    if complex_:
        R = R + 1j * rng.random((n, n))
    return (R - R.conj().T) / 2


def dense_solution(f, t0: float, t1: float, Y0: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Reference solution of the full dense ODE ``Y' = f(t, Y)`` by DOP853."""
    shape = Y0.shape
    cplx = np.iscomplexobj(Y0)

    def rhs(t, y):
        Y = (y[: y.size // 2] + 1j * y[y.size // 2 :]).reshape(shape) if cplx else y.reshape(shape)
        F = f(t, Y)
        return np.concatenate([F.real.ravel(), F.imag.ravel()]) if cplx else F.ravel()

    y0 = np.concatenate([Y0.real.ravel(), Y0.imag.ravel()]) if cplx else Y0.ravel()
    sol = solve_ivp(rhs, (t0, t1), y0, method="DOP853", rtol=rtol, atol=rtol * 1e-3)
    y = sol.y[:, -1]
    return (y[: y.size // 2] + 1j * y[y.size // 2 :]).reshape(shape) if cplx else y.reshape(shape)


def generic_field(rng: np.random.Generator, m: int, n: int, complex_: bool = False):
    """Nonlinear, non-autonomous, without Sylvester structure: the augmented blocks of the
    Euler closed forms have full column rank."""
    cast = (lambda a: a + 1j * rng.standard_normal(a.shape)) if complex_ else (lambda a: a)
    A = cast(rng.standard_normal((m, m))) / m
    B = cast(rng.standard_normal((n, n))) / n
    G = cast(rng.standard_normal((m, n)))

    def f(t, Y):
        return A @ Y + Y @ B + np.cos(3 * t) * G + 0.3 * np.tanh(Y.real) + 0.2 * Y * np.conj(Y)

    return f


def smooth_field(rng: np.random.Generator, n: int, nonautonomous: bool = True):
    """``F(t, Y) = W Y + Y B + c(t) G + tanh(Y)/2``: nonlinear, with a non-zero normal
    component (so projector splitting is not exact on it) and, optionally, time dependence
    through ``c(t) = cos(2t)``."""
    W, B, G = skew(rng, n), rng.standard_normal((n, n)) / n, 0.3 * rng.standard_normal((n, n))

    def f(t, Y):
        c = np.cos(2.0 * t) if nonautonomous else 1.0
        return W @ Y + Y @ B + c * G + 0.5 * np.tanh(Y)

    return f


def dlra_reference(f, Y0: lri.LowRankMatrix, T: float) -> np.ndarray:
    """The DLRA solution ``Y' = P(Y) F(t, Y)`` at ``T`` (real data), by DOP853 on the
    Koch-Lubich factor ODEs; accurate while ``S`` stays well conditioned."""
    (m, n), r = Y0.shape, Y0.rank
    sizes = np.cumsum([m * r, r * r])

    def unpack(y):
        U, S, V = np.split(y, sizes)
        return U.reshape(m, r), S.reshape(r, r), V.reshape(n, r)

    def rhs(t, y):
        U, S, V = unpack(y)
        F = f(t, U @ S @ V.T)
        FV, FhU, Sinv = F @ V, F.T @ U, np.linalg.inv(S)
        dU = (FV - U @ (U.T @ FV)) @ Sinv
        dV = (FhU - V @ (V.T @ FhU)) @ Sinv.T
        return np.concatenate([dU.ravel(), (U.T @ FV).ravel(), dV.ravel()])

    y0 = np.concatenate([np.asarray(a).ravel() for a in Y0])
    y = solve_ivp(rhs, (0.0, T), y0, method="DOP853", rtol=1e-13, atol=1e-15).y[:, -1]
    U, S, V = unpack(y)
    return U @ S @ V.T


def tangent_projection(U: np.ndarray, V: np.ndarray, Z: np.ndarray) -> np.ndarray:
    PU = U @ U.conj().T
    PV = V @ V.conj().T
    return PU @ Z + Z @ PV - PU @ Z @ PV


def proj(X: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto range(X) (any full-column-rank X)."""
    Q = np.linalg.qr(X)[0]
    return Q @ Q.conj().T


def naive_factor_rk4(f, Y0: lri.LowRankMatrix, T: float, h: float) -> np.ndarray:
    """Koch-Lubich factor ODEs with explicit RK4: the non-robust control (needs S invertible).

    Returns NaNs once S stops being numerically invertible."""
    U, S, V = (np.array(a) for a in Y0)

    def rhs(U, S, V):
        F = f(0.0, U @ S @ V.conj().T)
        FV = F @ V
        FhU = F.conj().T @ U
        dS = U.conj().T @ FV
        Sinv = np.linalg.inv(S)
        dU = (FV - U @ (U.conj().T @ FV)) @ Sinv
        dV = (FhU - V @ (V.conj().T @ FhU)) @ Sinv.conj().T
        return dU, dS, dV

    with np.errstate(all="ignore"):
        for _ in range(round(T / h)):
            if not np.all(np.isfinite(S)) or np.linalg.cond(S) > 1e16:
                return np.full((U.shape[0], V.shape[0]), np.nan)
            k1 = rhs(U, S, V)
            k2 = rhs(*(x + 0.5 * h * k for x, k in zip((U, S, V), k1, strict=True)))
            k3 = rhs(*(x + 0.5 * h * k for x, k in zip((U, S, V), k2, strict=True)))
            k4 = rhs(*(x + h * k for x, k in zip((U, S, V), k3, strict=True)))
            U, S, V = (
                x + h / 6 * (a + 2 * b + 2 * c + d)
                for x, a, b, c, d in zip((U, S, V), k1, k2, k3, k4, strict=True)
            )
    return U @ S @ V.conj().T


def observed_order(hs, errors) -> float:
    """Least-squares slope of log(error) against log(h)."""
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


class ExactLinearSubstep(lri.SubstepSolver):
    """Exact solver for substeps whose right-hand side is linear and autonomous in X.

    It assembles the matrix of ``X -> f(X)`` column by column and applies its exponential:
    for Sylvester fields every K-, L- and S-substep is of this kind, so integrators run with
    exact substeps (tiny sizes only)."""

    def integrate(self, f, t0, t1, X0):
        shape = X0.shape
        N = X0.size
        dtype = np.result_type(X0.dtype, np.float64)
        M = np.empty((N, N), dtype=dtype)
        for j in range(N):
            E = np.zeros(N, dtype=dtype)
            E[j] = 1.0
            M[:, j] = np.asarray(f(t0, E.reshape(shape))).ravel()
        return (sla.expm((t1 - t0) * M) @ np.asarray(X0).ravel()).reshape(shape)


def sylvester_rotation(n: int, r: int, seed: int = 1234):
    """V1 of the algorithm reference: F(Y) = W1 Y + Y + Y W2^T from Y0 = D_r."""
    rng = np.random.default_rng(seed)
    R1, R2 = rng.random((n, n)), rng.random((n, n))
    W1, W2 = (R1 - R1.T) / 2, (R2 - R2.T) / 2
    d = 2.0 ** -np.arange(1, n + 1)
    E = np.eye(n)[:, :r]
    Y0 = lri.LowRankMatrix(E, np.diag(d[:r]), E.copy())
    problem = lri.SylvesterODE(W1 + np.eye(n), W2)

    def exact(t):
        return sla.expm(t * W1) @ (np.exp(t) * E @ np.diag(d[:r]) @ E.T) @ sla.expm(t * W2).T

    return problem, Y0, exact


def rk4_reference(f, t0, t1, X):
    """One classical RK4 step of ``X' = f(t, X)`` from ``t0`` to ``t1``, textbook form."""
    h = t1 - t0
    k1 = f(t0, X)
    k2 = f(t0 + h / 2, X + h / 2 * k1)
    k3 = f(t0 + h / 2, X + h / 2 * k2)
    k4 = f(t1, X + h * k3)
    return X + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
