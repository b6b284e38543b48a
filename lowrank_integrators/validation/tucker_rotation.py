r"""V8: Tucker analogue of the Sylvester rotation, ``F(t, Y) = Y + sum_k Y x_k W_k`` (``eps = 0``).

Source: the Tucker tests of Lubich, Vandereycken, Walach (2018) and Ceruti, Lubich (2022),
arXiv:2010.02022: ``n = 20`` per mode, ``R_k = rng(99).random((n, n))`` for ``k = 1, 2, 3`` in
order, ``W_k = (R_k - R_k^T)/2``, superdiagonal core ``C_jjj = 2^{-j}``; the start is the
truncated core ``C_r`` with ``U_k = I[:, :r]``.

Reference (exact): ``A_r(t) = e^t C_r x_k (e^{t W_k}[:, :r])``, the exact low-rank solution (the
field is tangent to the manifold of multilinear rank ``(r, r, r)``).

Theory: Tucker projector splitting is exact up to the substep error; Tucker BUG is first order;
the rank-adaptive Tucker BUG started at ``(2, 2, 2)`` keeps that rank (the field is tangent, so
the augmented core has no new weight beyond the tolerance).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import expm

import lowrank_integrators as lri
from lowrank_integrators.verify import StudyResult, at_most, convergence_study, exactness_study
from lowrank_integrators.verify._runs import run
from lowrank_integrators.verify.methods import substep_for
from lowrank_integrators.verify.suite import Case

from ._common import Memo

NAME = "V8-tucker"
T = 1.0
STEPS_QUICK = (0.1, 0.05, 0.02)
STEPS_FULL = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002)
EXACT_TOL = 1e-6


class TuckerRotation:
    """The V8 setup (seed 99)."""

    def __init__(self, n: int = 20, seed: int = 99) -> None:
        g = np.random.default_rng(seed)
        R = [g.random((n, n)) for _ in range(3)]
        self.n = n
        self.W = [(Rk - Rk.T) / 2 for Rk in R]
        self.d = 2.0 ** -np.arange(1, n + 1)
        self.problem = lri.TensorSylvesterODE([np.eye(n) + self.W[0], self.W[1], self.W[2]])
        self._E = Memo(lambda t: [expm(t * W) for W in self.W])

    def core(self, r: int) -> np.ndarray:
        C = np.zeros((r, r, r))
        C[np.arange(r), np.arange(r), np.arange(r)] = self.d[:r]
        return C

    def initial_value(self, r: int) -> lri.TuckerTensor:
        eye = np.eye(self.n)[:, :r]
        return lri.TuckerTensor(self.core(r), [eye, eye, eye])

    def reference(self, r: int):
        def ref(t: float) -> np.ndarray:
            E = [Ek[:, :r] for Ek in self._E(t)]
            return np.exp(t) * np.einsum("abc,ia,jb,kc->ijk", self.core(r), *E)

        return ref


def _builder(make_method, name: str):
    def make(h: float):
        return make_method(substep_for(h))

    make.__name__ = name
    return make


def _rank_kept(setup: TuckerRotation, quick: bool) -> StudyResult:
    method = lri.TuckerBUG(lri.Tolerance(1e-8), substep=substep_for(0.05))
    sol = run(setup.problem, setup.initial_value(2), method, (0.0, T), 0.05)
    worst = max(max(r) for r in sol.ranks)
    return StudyResult(
        study="rank_kept",
        problem=NAME,
        method="TuckerBUG-adaptive",
        checks=[at_most("max mode rank", worst, 2.0, note="tangent field: rank (2, 2, 2) kept")],
        summary={"final_rank": list(sol.ranks[-1])},
        series={"t": sol.t, "rank": [max(r) for r in sol.ranks]},
    )


def cases(methods, quick: bool) -> list[Case]:
    setup = TuckerRotation()
    steps = STEPS_QUICK if quick else STEPS_FULL
    r = 4
    span = (0.0, T)
    Y0, ref = setup.initial_value(r), setup.reference(r)
    out: list[Case] = []
    make = _builder(lambda s: lri.TuckerProjectorSplitting(substep=s), "TuckerPSI")
    out.append(
        Case(
            NAME,
            "TuckerPSI",
            "exactness",
            lambda: exactness_study(
                setup.problem,
                Y0,
                make,
                ref,
                span,
                steps,
                tolerance=EXACT_TOL,
                problem_name=NAME,
                note="Tucker projector splitting is exact on this field",
            ),
        )
    )
    fixed = _builder(lambda s: lri.TuckerBUG(substep=s), "TuckerBUG")
    out.append(
        Case(
            NAME,
            "TuckerBUG",
            "convergence",
            lambda: convergence_study(
                setup.problem, Y0, fixed, ref, span, steps, expected_order=1, problem_name=NAME
            ),
        )
    )
    aug = _builder(
        lambda s: lri.TuckerBUG(lri.FixedRank((r, r, r)), substep=s), "TuckerBUG-augmented"
    )
    out.append(
        Case(
            NAME,
            "TuckerBUG-augmented",
            "convergence",
            lambda: convergence_study(
                setup.problem, Y0, aug, ref, span, steps, expected_order=1, problem_name=NAME
            ),
        )
    )
    out.append(Case(NAME, "TuckerBUG-adaptive", "rank_kept", lambda: _rank_kept(setup, quick)))
    return out
