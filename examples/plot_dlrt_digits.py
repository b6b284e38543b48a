"""
Dynamical low-rank training on digits
=====================================

Training a network is the gradient flow ``W' = -grad L(W)``; integrating it on the manifold of
rank-r matrices with the learning rate as the step size compresses the network while it trains
(DLRT: Schotthöfer, Zangrando, Kusch, Ceruti, Tudisco 2022, arXiv:2205.13571). Here a
64-256-256-10 network (two low-rank layers, the last layer dense) learns scikit-learn's 8 x 8
digits with the augmented BUG and Euler substeps, for two relative tolerances
``||sigma_tail|| <= tau ||sigma||``, next to the same network trained dense. The low-rank
layers start at rank 64 (full rank for the first layer); the rank settles within the first
epoch.

The runs are :func:`lowrank_integrators.training.run_training`, the loop behind
``lowrank-integrators train``; the command line
``lowrank-integrators train --dataset digits --tau 0.1 --rank 64 --epochs 8`` makes the first run.
"""

import matplotlib.pyplot as plt
import numpy as np

from lowrank_integrators.training import RunConfig, run_training

common = dict(dataset="digits", arch="64-256-256-10", epochs=8, lr=0.05, rank=64, seed=0)
configs = {
    "DLRT, tau = 0.1": RunConfig(integrator="augmented-bug", tau=0.1, **common),
    "DLRT, tau = 0.2": RunConfig(integrator="augmented-bug", tau=0.2, **common),
    "dense": RunConfig(integrator="dense", **common),
}
results = {
    name: run_training(cfg, progress=False, log=lambda line: None) for name, cfg in configs.items()
}

for name, res in results.items():
    print(
        f"{name:17s} test accuracy {res['test_accuracy']:.3f}, ranks {res['ranks']}, "
        f"evaluation compression {100 * res['compression_evaluation']:.0f} %"
    )

# %%
# Test accuracy per epoch, and the ranks of the two low-rank layers.

fig, (ax_acc, ax_rank) = plt.subplots(1, 2, figsize=(11, 4.5))
for (name, res), color in zip(results.items(), ["C0", "C1", "k"], strict=True):
    epochs = [h["epoch"] for h in res["history"]]
    accuracy = [100 * h["test_accuracy"] for h in res["history"]]
    ax_acc.plot(epochs, accuracy, "o-", color=color, label=name)
    if name == "dense":
        continue
    ranks = np.array([h["ranks"] for h in res["history"]])
    for layer, style in zip(range(ranks.shape[1]), ["-", "--"], strict=True):
        ax_rank.plot(
            epochs, ranks[:, layer], style, marker="o", color=color, label=f"{name}, layer {layer}"
        )
ax_acc.set_xlabel("epoch")
ax_acc.set_ylabel("test accuracy (%)")
ax_acc.legend(fontsize=8)
ax_acc.grid(True, alpha=0.3)
ax_rank.set_xlabel("epoch")
ax_rank.set_ylabel("rank at the end of the epoch")
ax_rank.legend(fontsize=8)
ax_rank.grid(True, alpha=0.3)
fig.tight_layout()
plt.show()
