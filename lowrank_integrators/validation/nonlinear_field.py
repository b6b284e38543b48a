r"""N1: a complex, non-autonomous, nonlinear field.

Source: designed for this suite, following the advice of Lubich, Oseledets (2014),
arXiv:1301.1058, and Ceruti, Lubich (2022), arXiv:2010.02022, to test splitting orders on
fields without Sylvester structure.
``F(t, Y) = i (H1 Y + Y H2) + cos(2 pi t) (Y o Y)`` with Hermitian ``H1``, ``H2``
(``o``: entrywise product), ``m = n = 30``, rank 4, ``T = 0.5``; data from ``rng(2024)``.

Why this problem: the tangent and Sylvester-type fields of V1, V5 and V8 make projector
splitting exact and cannot tell Lie-Trotter from Strang (pitfall noted for those problems);
the entrywise square is genuinely nonlinear and leaves the manifold (``eps != 0``); the
time-dependent coefficient exposes wrong stage times; complex data expose any missing
conjugate transpose.

Reference (independent of the integrators): the dynamical low-rank ODE
``Y' = P(Y) F(t, Y)`` (Koch, Lubich 2007) integrated in dense form by
``scipy.integrate.solve_ivp`` (DOP853, ``rtol = 1e-12``), with the tangent projection computed
from a fresh SVD of ``Y`` at every evaluation.

Theory: every method is a consistent discretisation of this ODE while ``sigma_r`` stays away
from 0. Projector splitting and BUG converge at their declared orders (KSL and BUG 1, Strang
2). Methods that augment the bases and truncate back to rank r are asserted first order only:
the truncated SVD of ``Y0 + h Z`` equals ``Y0 + h P(Y0) Z`` up to ``O(h^2)`` terms that grow
with the normal part of ``Z`` (``eps != 0`` here), so a higher declared order (midpoint BUG)
refers to the distance to the full solution up to ``eps`` terms, not to this reference.
Measured here (quick sweep): the midpoint BUG and abc-PSI about 1.5, the augmented BUG about
1.4. The second order of the midpoint BUG and the second-order parallel BUG is asserted on N2
(:mod:`.nonlinear_tangent`), a nonlinear field with ``eps = 0``.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

import lowrank_integrators as lri
from lowrank_integrators.verify import convergence_study
from lowrank_integrators.verify.suite import Case

from ._common import Memo, fixed_rank_builder, orthonormal

NAME = "N1-nonlinear"
T = 0.5
STEPS_QUICK = (0.1, 0.05, 0.025)
STEPS_FULL = (0.1, 0.05, 0.025, 0.0125, 0.00625)


def _hermitian(g: np.random.Generator, n: int) -> np.ndarray:
    X = g.standard_normal((n, n)) + 1j * g.standard_normal((n, n))
    return (X + X.conj().T) / (2 * np.sqrt(n))


class NonlinearField:
    """The N1 setup (seed 2024)."""

    def __init__(self, n: int = 30, r: int = 4, seed: int = 2024) -> None:
        g = np.random.default_rng(seed)
        self.H1 = _hermitian(g, n)
        self.H2 = _hermitian(g, n)
        U0 = orthonormal(g, n, r, complex_=True)
        V0 = orthonormal(g, n, r, complex_=True)
        self.r = r
        self.Y0 = lri.LowRankMatrix(U0, np.diag(2.0 ** -np.arange(r)).astype(complex), V0)
        self.problem = lri.DenseODE(self.field)
        self.reference = Memo(self._reference)

    def field(self, t: float, Y: np.ndarray) -> np.ndarray:
        return 1j * (self.H1 @ Y + Y @ self.H2) + np.cos(2 * np.pi * t) * (Y * Y)

    def _projected(self, t: float, y: np.ndarray) -> np.ndarray:
        n = self.H1.shape[0]
        Y = y.reshape(n, n)
        P, _, Qh = np.linalg.svd(Y)
        U, V = P[:, : self.r], Qh[: self.r].conj().T
        Z = self.field(t, Y)
        UhZ = U.conj().T @ Z
        return (U @ UhZ + (Z @ V) @ V.conj().T - U @ (UhZ @ V) @ V.conj().T).ravel()

    def _reference(self, t: float) -> np.ndarray:
        n = self.H1.shape[0]
        sol = solve_ivp(
            self._projected,
            (0.0, t),
            self.Y0.to_dense().ravel(),
            method="DOP853",
            rtol=1e-12,
            atol=1e-14,
        )
        if not sol.success:
            raise RuntimeError(f"reference integration failed: {sol.message}")
        return sol.y[:, -1].reshape(n, n)


def cases(methods, quick: bool) -> list[Case]:
    setup = NonlinearField()
    steps = STEPS_QUICK if quick else STEPS_FULL
    out: list[Case] = []
    for spec in methods:
        make = fixed_rank_builder(spec, setup.r)
        out.append(
            Case(
                NAME,
                spec.name,
                "convergence",
                lambda make=make, spec=spec: convergence_study(
                    setup.problem,
                    setup.Y0,
                    make,
                    setup.reference,
                    (0.0, T),
                    steps,
                    # augmented bases truncated back to rank r: first order (module docstring)
                    expected_order=1 if spec.rank_adaptive else spec.order,
                    assert_order=spec.fixed_rank_order,
                    problem_name=NAME,
                ),
            )
        )
    return out
