"""
Robustness to tiny singular values
==================================

The classical way to integrate dynamical low-rank approximation is to solve the factor ODEs of
Koch and Lubich (2007) with an explicit Runge-Kutta method:

.. math::

    S' = U^H F V, \\qquad U' = (I - U U^H) F V S^{-1}, \\qquad
    V' = (I - V V^H) F^H U S^{-H}.

They hold ``S^{-1}``: their Lipschitz constant grows like ``1 / sigma_min(S)``, and an explicit
method needs ``h`` below the smallest singular value. The integrators of this library never
invert ``S``; their error bounds do not depend on the singular values (Lubich, Oseledets 2014,
arXiv:1301.1058; Ceruti, Lubich 2022, arXiv:2010.02022).

The test field ``F(Y) = W1 Y + Y W2^T`` (skew-symmetric ``W1``, ``W2``) is tangent to the
rank-r manifold, so the exact solution ``e^(t W1) Y0 e^(t W2)^T`` keeps rank r and is the exact
low-rank solution as well. The start has singular values from 1 down to ``sigma_min``; the step
size is fixed.
"""

import matplotlib.pyplot as plt
import numpy as np
from scipy.linalg import expm

import lowrank_integrators as lri

rng = np.random.default_rng(3)
n, r, T, h = 60, 6, 1.0, 0.05
W1 = rng.standard_normal((n, n))
W1 = (W1 - W1.T) / np.sqrt(2 * n)
W2 = rng.standard_normal((n, n))
W2 = (W2 - W2.T) / np.sqrt(2 * n)
problem = lri.SylvesterODE(W1, W2)
E1, E2 = expm(T * W1), expm(T * W2)
U0 = np.linalg.qr(rng.standard_normal((n, r)))[0]
V0 = np.linalg.qr(rng.standard_normal((n, r)))[0]


def start(sigma_min):
    sigma = np.logspace(0.0, np.log10(sigma_min), r)
    return lri.LowRankMatrix(U0, np.diag(sigma), V0)


# %%
# The non-robust control: classical RK4 on the factor ODEs, written out in NumPy.


def factor_odes(U, S, V):
    F = W1 @ (U @ S @ V.T) + (U @ S @ V.T) @ W2.T
    FV, FtU = F @ V, F.T @ U
    dS = U.T @ FV
    dU = np.linalg.solve(S.T, (FV - U @ dS).T).T  # (I - U U^T) F V S^{-1}
    dV = np.linalg.solve(S, (FtU - V @ (V.T @ FtU)).T).T  # (I - V V^T) F^T U S^{-T}
    return dU, dS, dV


def factor_ode_rk4(Y0, h, T):
    X = (Y0.U, Y0.S, Y0.V)
    with np.errstate(all="ignore"):
        for _ in range(round(T / h)):
            k1 = factor_odes(*X)
            k2 = factor_odes(*(x + h / 2 * k for x, k in zip(X, k1, strict=True)))
            k3 = factor_odes(*(x + h / 2 * k for x, k in zip(X, k2, strict=True)))
            k4 = factor_odes(*(x + h * k for x, k in zip(X, k3, strict=True)))
            X = tuple(
                x + h / 6 * (a + 2 * b + 2 * c + d)
                for x, a, b, c, d in zip(X, k1, k2, k3, k4, strict=True)
            )
        return X[0] @ X[1] @ X[2].T


# %%
# Error at ``T = 1`` as the smallest singular value of the start shrinks. A run of the control
# that overflows is drawn at the top of the axes.

sigmas = np.logspace(-1, -12, 12)
methods = {
    "projector splitting": lri.ProjectorSplitting(),
    "BUG": lri.BUG(),
    "augmented BUG, FixedRank(r)": lri.AugmentedBUG(lri.FixedRank(r)),
    "midpoint BUG, FixedRank(r)": lri.MidpointBUG(lri.FixedRank(r)),
}
errors = {name: [] for name in [*methods, "factor ODEs + RK4 (Koch-Lubich)"]}
for sigma_min in sigmas:
    Y0 = start(sigma_min)
    exact = E1 @ Y0.to_dense() @ E2.T
    for name, method in methods.items():
        sol = lri.solve(problem, Y0, (0.0, T), h, method=method)
        errors[name].append(np.linalg.norm(sol.Y.to_dense() - exact))
    Y_control = factor_ode_rk4(Y0, h, T)
    errors["factor ODEs + RK4 (Koch-Lubich)"].append(np.linalg.norm(Y_control - exact))

cap = 1e2
fig, ax = plt.subplots(figsize=(10, 4.5))
for name, e in errors.items():
    e = np.asarray(e)
    shown = np.where(np.isfinite(e), np.minimum(e, cap), cap)
    style = "s--" if "Koch" in name else "o-"
    ax.loglog(sigmas, shown, style, label=name)
    print(f"{name:34s} largest error {np.nanmax(np.where(np.isfinite(e), e, np.inf)):.2e}")
ax.axhline(cap, color="grey", lw=0.8, ls=":")
ax.text(1e-12, cap, "overflow or error > 100 ", ha="right", va="bottom", color="grey", fontsize=8)
ax.axvline(h, color="grey", lw=0.8, ls=":")
ax.text(h, 1e-7, " sigma_min = h", color="grey", fontsize=8)
ax.invert_xaxis()
ax.set_xlabel("smallest singular value of the start")
ax.set_ylabel("error at T = 1 (Frobenius)")
ax.set_ylim(1e-8, 30 * cap)
ax.set_title(f"fixed step h = {h}, rank {r}", fontsize=10)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
plt.show()
