"""
A Tucker tensor ODE
===================

``Y' = Y x_1 A_1 + Y x_2 A_2 + Y x_3 A_3 + C`` on ``16 x 16 x 16`` tensors: a diffusion with a
rotation in each mode and a constant source of multilinear rank ``(1, 1, 1)``, started from a
Tucker tensor of multilinear rank ``(2, 2, 2)``. The source feeds new directions into every
mode, so the multilinear rank of the solution grows.

* :class:`~lowrank_integrators.TuckerProjectorSplitting` keeps the starting ranks (Lubich 2015;
  Lubich, Vandereycken, Walach 2018): its error is the distance of the solution to the
  fixed-rank manifold.
* :class:`~lowrank_integrators.TuckerBUG` with a truncation rule is the rank-adaptive Tucker BUG
  (Ceruti, Kusch, Lubich 2022, arXiv:2104.05247; Ceruti, Lubich, Sulz 2023, arXiv:2201.10291):
  it augments each mode with the old basis and truncates the core mode by mode.
  Its error is made in the first steps, while the rank grows from 2 (by at most a factor
  two per step) and the source is not yet resolved; the diffusion then damps it. A smaller
  step shrinks it in proportion.

:class:`~lowrank_integrators.TensorSylvesterODE` forms mode products of the core only; the full
tensor appears here only in the reference, :func:`scipy.integrate.solve_ivp` on all
``16^3`` entries.
"""

import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import solve_ivp

import lowrank_integrators as lri

rng = np.random.default_rng(11)
n, T, h = 16, 1.0, 0.02
laplacian = np.diag(-2.0 * np.ones(n)) + np.eye(n, k=1) + np.eye(n, k=-1)
operators = []
for _ in range(3):
    R = rng.standard_normal((n, n))
    operators.append(0.2 * laplacian + (R - R.T) / (2 * np.sqrt(n)))
a, b, c = (np.linalg.qr(rng.standard_normal((n, 1)))[0] for _ in range(3))
source = lri.TuckerTensor(np.full((1, 1, 1), 0.5), [a, b, c])
problem = lri.TensorSylvesterODE(operators, source)

core0 = rng.standard_normal((2, 2, 2))
factors0 = [np.linalg.qr(rng.standard_normal((n, 2)))[0] for _ in range(3)]
Y0 = lri.TuckerTensor(core0 / np.linalg.norm(core0), factors0)

# %%
# The reference on the full tensor. ``Y x_k A`` multiplies mode k by ``A``.

A1, A2, A3 = operators
C_full = source.to_dense()


def full_field(t, y):
    Y = y.reshape(n, n, n)
    F = (
        np.einsum("ia,ajk->ijk", A1, Y)
        + np.einsum("jb,ibk->ijk", A2, Y)
        + np.einsum("kc,ijc->ijk", A3, Y)
    )
    return (F + C_full).ravel()


full = solve_ivp(
    full_field, (0.0, T), Y0.to_dense().ravel(), dense_output=True, rtol=1e-10, atol=1e-12
)


def reference(t):
    return full.sol(t).reshape(n, n, n)


# %%
# Fixed ranks against adaptive ranks.


def rule():
    return lri.Tolerance(1e-4, scale_with_h=True, rmax=12)


runs = {
    "Tucker projector splitting, ranks (2, 2, 2)": (lri.TuckerProjectorSplitting(), h),
    "Tucker BUG, ranks (2, 2, 2)": (lri.TuckerBUG(), h),
    f"rank-adaptive Tucker BUG, h = {h}": (lri.TuckerBUG(rule()), h),
    f"rank-adaptive Tucker BUG, h = {h / 4}": (lri.TuckerBUG(rule()), h / 4),
}
fig, (ax_err, ax_rank) = plt.subplots(1, 2, figsize=(11, 4.5))
for name, (method, step) in runs.items():
    sol = lri.solve(problem, Y0, (0.0, T), step, method=method, save_states=True)
    pairs = zip(sol.t, sol.states, strict=True)
    errors = [np.linalg.norm(Y.to_dense() - reference(t)) for t, Y in pairs]
    print(f"{name:44s} error at T {errors[-1]:.1e}, final ranks {sol.ranks[-1]}")
    ax_err.semilogy(sol.t[1:], errors[1:], label=name)
    if method.rank_adaptive and step == h:
        ranks = np.array(sol.ranks)
        for mode, style in zip(range(3), ["-", "--", ":"], strict=True):
            ax_rank.step(sol.t, ranks[:, mode], style, where="post", label=f"mode {mode + 1}")

ax_err.set_xlabel("t")
ax_err.set_ylabel("error (Frobenius norm of the tensor)")
ax_err.legend(fontsize=8)
ax_err.grid(True, which="both", alpha=0.3)
ax_rank.set_xlabel("t")
ax_rank.set_ylabel("rank of the mode")
ax_rank.set_title(f"rank-adaptive Tucker BUG, h = {h}", fontsize=10)
ax_rank.legend(fontsize=8)
ax_rank.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
