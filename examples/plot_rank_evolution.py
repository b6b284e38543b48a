"""
Rank evolution on the Schrödinger problem
=========================================

The discrete Schrödinger equation ``i Y' = -1/2 (D Y + Y D) + V_cos Y V_cos`` of Ceruti, Kusch
and Lubich (2022, arXiv:2104.05247, Sec. 6.1), with the parameters of the authors' code
(``N = 100``, singular values of the initial value ``10^-i``), is one of the reference problems
of the validation suite (:mod:`lowrank_integrators.validation.schrodinger`).

Started from the leading terms of the initial value at rank 4, the rank-adaptive methods add the
directions the Hamiltonian creates, with a discarded tail of at most ``theta`` per step. Their
final singular values are compared with those of the exact solution (``expm_multiply`` on the
full ``N^2`` system).
"""

import matplotlib.pyplot as plt
import numpy as np

import lowrank_integrators as lri
from lowrank_integrators.validation.schrodinger import Schrodinger

setup = Schrodinger(N=100)
Y0 = setup.initial_value(4)
T, h, theta = 1.0, 0.01, 1e-6
exact = setup.reference(T)
sigma_exact = np.linalg.svd(exact, compute_uv=False)


def rule():
    return lri.Tolerance(theta, rmax=30)


methods = {
    "augmented BUG": lri.AugmentedBUG(rule()),
    "parallel BUG": lri.ParallelBUG(rule()),
    "midpoint BUG": lri.MidpointBUG(rule()),
    "abc-PSI": lri.AugmentedBackwardCorrectedPSI(rule()),
}

fig, (ax_rank, ax_sigma) = plt.subplots(1, 2, figsize=(11, 4.5))
k = np.arange(1, 31)
ax_sigma.semilogy(k, sigma_exact[:30], "k.-", lw=1.5, label="exact solution at T")
for name, method in methods.items():
    sol = lri.solve(setup.problem, Y0, (0.0, T), h, method=method)
    error = np.linalg.norm(sol.Y.to_dense() - exact)
    tails = [info.truncation.tail for info in sol.step_info if info.truncation is not None]
    print(
        f"{name:14s} final rank {sol.ranks[-1]:2d}, error {error:.1e}, "
        f"largest discarded tail {max(tails):.1e}"
    )
    ax_rank.step(sol.t, sol.ranks, where="post", label=f"{name} (error {error:.1e})")
    sigma = sol.singular_values[-1]
    ax_sigma.semilogy(np.arange(1, len(sigma) + 1), sigma, "o", ms=4, mfc="none", label=name)

ax_rank.set_xlabel("t")
ax_rank.set_ylabel("rank")
ax_rank.set_title(f"Tolerance({theta:g}), h = {h}", fontsize=10)
ax_rank.legend(fontsize=8)
ax_rank.grid(True, alpha=0.3)
ax_sigma.axhline(theta, color="grey", ls=":", lw=1)
ax_sigma.text(30, theta, "theta", ha="right", va="bottom", color="grey")
ax_sigma.set_xlabel("index")
ax_sigma.set_ylabel("singular value at T = 1")
ax_sigma.legend(fontsize=8)
ax_sigma.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
