r"""V9: gradient flow to the best rank-r approximation, ``L(W) = 1/2 ||W - A||_F^2``.

Source: the descent setting of dynamical low-rank training (Schotthofer, Zangrando, Kusch,
Ceruti, Tudisco 2022, arXiv:2205.13571) and of the rank-adaptive BUG (Ceruti, Kusch, Lubich
2022, arXiv:2104.05247). ``m = 100``, ``n = 80``, ``r = 5``; from ``g = rng(3)`` in order:
``Ua`` = Q of ``g.standard_normal((100, 80))``, ``Va`` = Q of ``g.standard_normal((80, 80))``,
``U0`` = Q of ``g.standard_normal((100, 5))``, ``V0`` = Q of ``g.standard_normal((80, 5))``,
``S0 = diag(g.random(5))``. Target ``A = Ua diag(0.8^{j-1}) Va^T``. One explicit Euler
substep per substep, step = learning rate ``lambda``, 200 steps.

Reference (exact): the minimal rank-5 loss ``L* = 1/2 sum_{j>5} 0.64^{j-1}`` (Eckart-Young);
no rank-5 iterate can go below it.

Theory: ``grad L`` is 1-Lipschitz. For ``lambda <= 1`` the rank-adaptive BUG (DLRT) does not
increase the loss at any step up to its truncation (asserted, each step allowed
``tail (||grad L|| + 3/2 tail)`` from its recorded truncation tail, see
``lowrank_integrators.verify.descent.truncation_slack``); for the other methods
descent was observed but is not proved (reported). At ``lambda = 1`` and ``0.5`` the
iterates converge to ``A_r`` and ``L -> L*`` (asserted for all methods: at ``lambda = 1`` the
fixed-rank BUG is block power iteration). At ``lambda = 1.5 > 1 / Lip`` nothing is asserted.
"""

from __future__ import annotations

import numpy as np

import lowrank_integrators as lri
from lowrank_integrators.verify import descent_study
from lowrank_integrators.verify.suite import Case

NAME = "V9-gradient-flow"
N_STEPS = 200


class GradientFlow:
    """The V9 setup (seed 3)."""

    def __init__(self, m: int = 100, n: int = 80, r: int = 5, seed: int = 3) -> None:
        g = np.random.default_rng(seed)
        Ua = np.linalg.qr(g.standard_normal((m, n)))[0]
        Va = np.linalg.qr(g.standard_normal((n, n)))[0]
        U0 = np.linalg.qr(g.standard_normal((m, r)))[0]
        V0 = np.linalg.qr(g.standard_normal((n, r)))[0]
        S0 = np.diag(g.random(r))
        sigma = 0.8 ** np.arange(n)
        self.A = (Ua * sigma) @ Va.T
        self.Y0 = lri.LowRankMatrix(U0, S0, V0)
        # F(W) = -grad L = A - W, i.e. the Sylvester form (-I) W + A.
        self.problem = lri.SylvesterODE(-np.eye(m), None, self.A)
        self.minimum = 0.5 * float(np.sum(sigma[r:] ** 2))

    def loss(self, Y: lri.LowRankMatrix) -> float:
        return 0.5 * float(np.linalg.norm(Y.to_dense() - self.A) ** 2)

    def grad_norm(self, Y: lri.LowRankMatrix) -> float:
        """``||grad L(Y)|| = ||Y - A||``."""
        return float(np.linalg.norm(Y.to_dense() - self.A))


def cases(methods, quick: bool) -> list[Case]:
    setup = GradientFlow()
    out: list[Case] = []
    rates = (1.0, 1.5) if quick else (0.5, 1.0, 1.5)
    for spec in methods:
        for lam in rates:
            stable = lam <= 1.0
            method = spec.make(lri.Euler(), lri.FixedRank(5) if spec.rank_adaptive else None)
            out.append(
                Case(
                    NAME,
                    spec.name,
                    f"descent-lr{lam:g}",
                    lambda method=method, lam=lam, stable=stable, spec=spec: descent_study(
                        setup.problem,
                        setup.Y0,
                        method,
                        setup.loss,
                        (0.0, N_STEPS * lam),
                        lam,
                        monotone=stable and spec.descent,
                        target=setup.minimum,
                        assert_target=stable,
                        target_tolerance=1e-8 * setup.minimum,
                        grad_norm=setup.grad_norm,
                        lipschitz=1.0,
                        problem_name=NAME,
                    ),
                )
            )
    return out
