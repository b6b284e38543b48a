"""
Convergence orders on a Sylvester problem
=========================================

The differential Sylvester equation ``Y' = A Y + Y B^T + C`` with a rank-2 source ``C`` is not
tangent to the rank-r manifold, so two references make sense:

* the fixed-rank methods approximate the solution of the *projected* ODE
  ``Y' = P(Y) F(Y)`` (dynamical low-rank approximation at rank r), computed here by
  :func:`scipy.integrate.solve_ivp` on the dense ``n x n`` system;
* the rank-adaptive methods approximate the *full* solution, their rank growing as the
  source fills in new directions. Their tolerance is tied to the step,
  ``tau = theta h^(p+1)`` for a method of order ``p``, so that the ``n tau`` accumulated by
  the truncations does not hide the order.

The orders are fitted with :func:`lowrank_integrators.verify.fit_order` (least squares on
``log e`` against ``log h``).
"""

import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

import lowrank_integrators as lri
from lowrank_integrators import verify

# %%
# The problem: a diffusion with a rotation, a rank-2 source and a rank-5 start.

rng = np.random.default_rng(7)
n, r, T = 40, 5, 1.0
laplacian = 0.5 * (np.diag(-2.0 * np.ones(n)) + np.eye(n, k=1) + np.eye(n, k=-1))
R = rng.standard_normal((n, n))
W = (R - R.T) / (2 * np.sqrt(n))
A, B = laplacian + W, laplacian - W.T
c = np.linalg.qr(rng.standard_normal((n, 2)))[0]
d = np.linalg.qr(rng.standard_normal((n, 2)))[0]
C = lri.LowRankMatrix(c, np.diag([1.0, 0.5]), d)
problem = lri.SylvesterODE(A, B, C)

X = rng.standard_normal((n, r)) @ rng.standard_normal((r, n))
Y0 = lri.LowRankMatrix.from_dense(X / np.linalg.norm(X), rank=r)
C_dense = C.to_dense()


def field(Y):
    return A @ Y + Y @ B.T + C_dense


def projected_field(t, y):
    """``P(Y) F(Y)`` with the tangent projection at the rank-r matrix ``Y``."""
    Y = y.reshape(n, n)
    U, _, Vh = np.linalg.svd(Y)
    U, V = U[:, :r], Vh[:r].T
    F = field(Y)
    UtF = U.T @ F
    return (U @ UtF + (F @ V) @ V.T - U @ (UtF @ V) @ V.T).ravel()


def reference(rhs):
    y0 = Y0.to_dense().ravel()
    sol = solve_ivp(rhs, (0.0, T), y0, method="DOP853", rtol=1e-12, atol=1e-14)
    return sol.y[:, -1].reshape(n, n)


dlra_reference = reference(projected_field)
full_reference = reference(lambda t, y: field(y.reshape(n, n)).ravel())

# %%
# Step-size sweeps. Each run is one call of :func:`lowrank_integrators.solve`.

steps = [0.1, 0.05, 0.025, 0.0125, 0.00625]
theta = 0.1
fixed_rank = {
    "projector splitting (Lie-Trotter)": lri.ProjectorSplitting(),
    "projector splitting (Strang)": lri.ProjectorSplitting(order=2),
    "BUG": lri.BUG(),
}
rank_adaptive = {
    "augmented BUG": lri.AugmentedBUG(lri.Tolerance(theta, scale_with_h=2)),
    "abc-PSI": lri.AugmentedBackwardCorrectedPSI(lri.Tolerance(theta, scale_with_h=2)),
    "parallel BUG": lri.ParallelBUG(lri.Tolerance(theta, scale_with_h=2)),
    "midpoint BUG": lri.MidpointBUG(lri.Tolerance(theta, scale_with_h=3)),
    "parallel BUG, order 2": lri.ParallelBUG(lri.Tolerance(theta, scale_with_h=3), order=2),
}


def sweep(method, ref):
    errors = []
    for h in steps:
        sol = lri.solve(problem, Y0, (0.0, T), h, method=method)
        errors.append(np.linalg.norm(sol.Y.to_dense() - ref))
    return np.array(errors)


fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
panels = [
    (axes[0], fixed_rank, dlra_reference, f"fixed rank {r}, against the projected ODE"),
    (axes[1], rank_adaptive, full_reference, "rank-adaptive, against the full solution"),
]
for ax, methods, ref, title in panels:
    for name, method in methods.items():
        errors = sweep(method, ref)
        fit = verify.fit_order(steps, errors)
        print(f"{name:36s} declared order {method.order}, fitted {fit.order:.2f}")
        ax.loglog(steps, errors, "o-", label=f"{name} ({fit.order:.2f})")
    h = np.array(steps)
    for p, style in [(1, ":"), (2, "--")]:
        ax.loglog(h, 0.5 * h**p, "k" + style, lw=1, label=f"slope {p}")
    ax.set_xlabel("step size h")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, title="method (fitted order)", title_fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("error at T = 1 (Frobenius)")
fig.tight_layout()
plt.show()
