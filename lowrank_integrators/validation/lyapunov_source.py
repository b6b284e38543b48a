r"""V7: differential Lyapunov equation with a low-rank source, ``Y' = A Y + Y A^T + C``.

Source: the rank-growth test of Ceruti, Kusch, Lubich (2022), arXiv:2104.05247:
``A = tridiag(1, -2, 1)`` (not stiff), ``n = 100``, ``C = B B^T`` with
``B = rng(11).standard_normal((n, 2))`` normalised, ``Y0 = x0 x0^T`` with ``||x0|| = 0.1``
(``x0`` from ``rng(12)``: the published setup fixes no seed), ``T = 1``.

Variant (this suite): a complex, non-Hermitian source ``C = B1 B2^H`` and a complex rank-1
start ``x0 y0^H`` (``rng(13)``). A symmetric source cannot reveal a missing conjugate
transpose in the L-product (``C U`` instead of ``C^H U``); this one does.

Reference (independent): variation of constants through ``expm_multiply`` of the affine
system augmented by a constant 1, with the ``n^2 x n^2`` operator ``A (x) I + I (x) A``
(row-major vec).

Theory: the rank-adaptive methods start at rank 1 and can at most double the rank per step
(quadruple for the midpoint BUG); with a tolerance ``tau = theta h^2`` they converge at first
order (the source lost while the rank lags costs O(h), whatever the nominal order).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import expm_multiply

import lowrank_integrators as lri
from lowrank_integrators.verify import (
    BoundCase,
    StudyResult,
    convergence_study,
    error_bound_study,
    informational,
)
from lowrank_integrators.verify._runs import final_error, run
from lowrank_integrators.verify.rank_adaptivity import truncation_checks
from lowrank_integrators.verify.suite import Case

from ._common import Memo, builder

NAME = "V7-lyapunov"
T = 1.0
STEPS_QUICK = (0.1, 0.05, 0.025)
STEPS_FULL = (0.1, 0.05, 0.025, 0.0125, 0.00625)
RMAX = 40


class Lyapunov:
    """The V7 setup; ``complex_source=True`` gives the non-Hermitian complex variant."""

    def __init__(self, n: int = 100, complex_source: bool = False) -> None:
        self.n = n
        self.A = sp.diags(
            [np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1], format="csr"
        )
        if complex_source:
            g = np.random.default_rng(13)
            B1 = g.standard_normal((n, 2)) + 1j * g.standard_normal((n, 2))
            B2 = g.standard_normal((n, 2)) + 1j * g.standard_normal((n, 2))
            C = (B1 / np.linalg.norm(B1)) @ (B2 / np.linalg.norm(B2)).conj().T
            x0 = g.standard_normal(n) + 1j * g.standard_normal(n)
            y0 = g.standard_normal(n) + 1j * g.standard_normal(n)
            y0 /= np.linalg.norm(y0)
        else:
            B = np.random.default_rng(11).standard_normal((n, 2))
            B /= np.linalg.norm(B)
            C = B @ B.T
            x0 = np.random.default_rng(12).standard_normal(n)
            y0 = x0 / np.linalg.norm(x0)
        x0 = 0.1 * x0 / np.linalg.norm(x0)
        s0 = np.linalg.norm(x0)
        self.C = C
        self.Y0 = lri.LowRankMatrix(
            (x0 / s0)[:, None], np.array([[s0]], dtype=C.dtype), y0[:, None].astype(C.dtype)
        )
        self.problem = lri.SylvesterODE(self.A, self.A, C)
        self.reference = Memo(self._reference)

    def _reference(self, t: float) -> np.ndarray:
        n = self.n
        eye = sp.identity(n, format="csr")
        L = sp.kron(self.A, eye) + sp.kron(eye, self.A)
        top = sp.hstack([L, sp.csr_matrix(self.C.reshape(-1, 1))])
        op = sp.vstack([top, sp.csr_matrix((1, n * n + 1))]).tocsr()
        y0 = np.concatenate([self.Y0.to_dense().ravel(), [1.0]]).astype(self.C.dtype)
        return expm_multiply(t * op, y0)[:-1].reshape(n, n)


def _ranks(setup: Lyapunov, spec, h: float) -> StudyResult:
    make = builder(spec, lri.Tolerance(1e-6, rmax=RMAX))
    sol = run(setup.problem, setup.Y0, make, (0.0, T), h)
    ranks = [int(r) for r in sol.ranks]
    monotone = float(np.all(np.diff(ranks) >= 0))
    checks = truncation_checks(sol.step_info, rmax=RMAX, max_growth=spec.max_growth)
    checks.append(informational("rank non-decreasing", monotone, "observed, not a theorem"))
    return StudyResult(
        study="rank_growth",
        problem=NAME,
        method=spec.name,
        checks=checks,
        summary={"error": final_error(sol, setup.reference), "final_rank": ranks[-1]},
        series={"t": sol.t, "rank": ranks},
    )


def _bound(setup: Lyapunov, spec, steps) -> StudyResult:
    """Fit ``c0 delta + c1 eps + c2 h (+ c2' h^2) + c3 n theta`` over tolerances and steps."""
    thetas = {"theta=1e-3": 1e-3, "theta=1e-5": 1e-5}
    cases = [BoundCase(label, setup.problem, setup.Y0, setup.reference) for label in thetas]
    return error_bound_study(
        cases,
        lambda case, h: builder(spec, lri.Tolerance(thetas[case.label], rmax=RMAX))(h),
        (0.0, T),
        steps,
        h_powers=(1, 2) if spec.order == 2 else (1,),
        problem_name=NAME,
        method_name=spec.name,
    )


def cases(methods, quick: bool) -> list[Case]:
    steps = STEPS_QUICK if quick else STEPS_FULL
    variants = {"V7-lyapunov": Lyapunov(), "V7-lyapunov-complex": Lyapunov(complex_source=True)}
    out: list[Case] = []
    for name, setup in variants.items():
        for spec in methods:
            if not spec.rank_adaptive:
                continue
            make = builder(spec, lri.Tolerance(1e-2, scale_with_h=2, rmax=RMAX))
            out.append(
                Case(
                    name,
                    spec.name,
                    "convergence",
                    lambda make=make, setup=setup, spec=spec, name=name: convergence_study(
                        setup.problem,
                        setup.Y0,
                        make,
                        setup.reference,
                        (0.0, T),
                        steps,
                        expected_order=1,
                        problem_name=name,
                    ),
                )
            )
            if name == NAME:
                out.append(
                    Case(
                        name,
                        spec.name,
                        "rank_growth",
                        lambda spec=spec, setup=setup: _ranks(setup, spec, 0.05),
                    )
                )
                out.append(
                    Case(
                        name,
                        spec.name,
                        "error_bound",
                        lambda spec=spec, setup=setup: _bound(setup, spec, steps),
                    )
                )
    return out
