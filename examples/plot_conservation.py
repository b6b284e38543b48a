"""
Conservation and drift
======================

The Schrödinger equation of :mod:`lowrank_integrators.validation.schrodinger` conserves the
norm ``||Y||`` and the energy ``<Y, H[Y]>``. What the integrators keep of that:

* projector splitting conserves both up to the substep error: every substep is a Galerkin
  restriction of a Hamiltonian flow (Lubich, Oseledets 2014, arXiv:1301.1058);
* the rank-adaptive BUG conserves the norm up to the discarded tails (Ceruti, Kusch, Lubich
  2022, arXiv:2104.05247);
* the fixed-rank BUG drifts by ``O(h)``: its Galerkin step starts from a projection of the old
  state (Ceruti, Lubich 2022, arXiv:2010.02022). Halving ``h`` halves the drift.
"""

import matplotlib.pyplot as plt
import numpy as np

import lowrank_integrators as lri
from lowrank_integrators.validation.schrodinger import Schrodinger

setup = Schrodinger(N=100)
r, T = 8, 1.0
Y0 = setup.initial_value(r)
norm0, energy0 = setup.norm(0.0, Y0), setup.energy(0.0, Y0)

runs = {
    "projector splitting, h = 0.02": (lri.ProjectorSplitting(), 0.02),
    "Strang splitting, h = 0.02": (lri.ProjectorSplitting(order=2), 0.02),
    "augmented BUG, Tolerance(1e-8), h = 0.02": (
        lri.AugmentedBUG(lri.Tolerance(1e-8, rmax=20)),
        0.02,
    ),
    "BUG, h = 0.02": (lri.BUG(), 0.02),
    "BUG, h = 0.01": (lri.BUG(), 0.01),
}

fig, (ax_norm, ax_energy) = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
floor = 1e-17  # drifts at round-off are drawn at this level on the log axes
for name, (method, h) in runs.items():
    sol = lri.solve(setup.problem, Y0, (0.0, T), h, method=method, save_states=True)
    norm_drift = [
        abs(setup.norm(t, Y) - norm0) / norm0 for t, Y in zip(sol.t, sol.states, strict=True)
    ]
    energy_drift = [
        abs(setup.energy(t, Y) - energy0) / energy0 for t, Y in zip(sol.t, sol.states, strict=True)
    ]
    print(f"{name:42s} norm drift {norm_drift[-1]:.1e}, energy drift {energy_drift[-1]:.1e}")
    style = "--" if name.startswith("BUG") else "-"
    ax_norm.semilogy(sol.t, np.maximum(norm_drift, floor), style, label=name)
    ax_energy.semilogy(sol.t, np.maximum(energy_drift, floor), style, label=name)

ax_norm.set_ylabel("relative drift of the norm")
ax_energy.set_ylabel("relative drift of the energy")
for ax in (ax_norm, ax_energy):
    ax.set_xlabel("t")
    ax.grid(True, which="both", alpha=0.3)
ax_norm.legend(fontsize=8)
fig.suptitle(f"Schrödinger problem, N = {setup.N}, rank {r}", fontsize=10)
fig.tight_layout()
plt.show()
