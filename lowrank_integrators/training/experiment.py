"""A training run from a configuration: method registry, epochs, evaluation, checkpoints.

Used by ``lowrank-integrators train`` and by the benchmark scripts. A run is determined by its
:class:`RunConfig`: the seed fixes the initial weights and the shuffling of every epoch, and the
generator's state is saved with each checkpoint, so a run resumed from the checkpoint of epoch
``e`` repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..integrators.base import Integrator
from ..methods import Method, training_methods
from ..substeps import Euler
from ..threads import limited
from ..truncation import FixedRank, Tolerance, TruncationRule
from .checkpoint import load_checkpoint, save_checkpoint
from .client import LowRankTraining, TrainingDiverged, TrainState
from .data import Dataset, load_dataset
from .network import MLP, parse_arch
from .optimizers import SGD, Adam, HeavyBall, Optimizer

__all__ = ["BASELINES", "INTEGRATORS", "RunConfig", "make_integrator", "run_training"]

#: Integrator names of the command line and the methods they build (all with Euler
#: substeps), from the registry :mod:`lowrank_integrators.methods`.
INTEGRATORS: dict[str, Method] = training_methods()
#: Baselines trained by the same loop: every layer dense, or vanilla ``W = U V^T`` factors.
BASELINES = ("dense", "vanilla")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a training run (see ``lowrank-integrators train --help``)."""

    dataset: str = "digits"
    arch: str = "64-256-256-10"
    integrator: str = "augmented-bug"
    tau: float | None = 0.1
    rank: int = 20
    rmin: int = 2
    rmax: int | None = None
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    seed: int = 0
    dtype: str = "float32"
    last_dense: bool = True
    init_decay: float | None = None
    n_train: int | None = None
    n_test: int | None = None

    def __post_init__(self) -> None:
        if self.integrator not in INTEGRATORS and self.integrator not in BASELINES:
            raise ValueError(
                f"integrator must be one of {sorted(INTEGRATORS) + list(BASELINES)}, got "
                f"{self.integrator!r}"
            )
        if self.optimizer not in ("sgd", "momentum", "adam"):
            raise ValueError(f"optimizer must be sgd, momentum or adam, got {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        for name in ("epochs", "batch_size", "rank", "rmin"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for all), got {value}")
        if self.rmax is not None and self.rmax < self.rmin:
            raise ValueError(f"rmax must be >= rmin = {self.rmin}, got {self.rmax}")
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.init_decay is not None and not (
            math.isfinite(self.init_decay) and self.init_decay > 1.0
        ):
            raise ValueError(f"init_decay must be a finite number > 1, got {self.init_decay}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        if self.tau is not None and not (math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau}")
        widths = parse_arch(self.arch)
        if self.integrator != "dense":
            pairs = list(itertools.pairwise(widths))
            lowrank = pairs[:-1] if self.last_dense else pairs
            for i, (a, b) in enumerate(lowrank):
                if self.rank > min(a, b):
                    raise ValueError(
                        f"rank {self.rank} is larger than layer {i + 1} ({a} -> {b}) allows: "
                        f"at most {min(a, b)}"
                    )

    def differences(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """The fields other than ``epochs`` in which ``other`` differs: ``{name: (mine, its)}``."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
            if f.name != "epochs" and getattr(self, f.name) != getattr(other, f.name)
        }

    def resumable_with(self, other: RunConfig) -> bool:
        """Whether ``other`` continues this run (everything but the number of epochs agrees)."""
        return not self.differences(other)


def make_integrator(
    name: str, tau: float | None, rank: int, rmin: int, rmax: int | None
) -> Integrator:
    """The integrator of a command-line name, with Euler substeps (the discrete DLRT methods).

    ``tau`` is the relative tolerance of the DLRT convention ``||sigma_tail|| <= tau ||sigma||``
    with clamps ``[rmin, rmax]``; ``tau=None`` truncates the rank-adaptive methods to ``rank``.
    """
    if name not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {sorted(INTEGRATORS)}, got {name!r}")
    method = INTEGRATORS[name]
    if not method.rank_adaptive:
        return method.build(Euler())  # type: ignore[return-value]
    rule: TruncationRule
    if tau is None:
        rule = FixedRank(rank)
    else:
        rule = Tolerance(tau, relative=True, rmin=min(rmin, rmax or rmin), rmax=rmax)
    return method.build(Euler(), rule)  # type: ignore[return-value]


def make_optimizer(cfg: RunConfig) -> Optimizer:
    if cfg.optimizer == "sgd":
        return SGD()
    if cfg.optimizer == "momentum":
        return HeavyBall(cfg.momentum)
    return Adam()


def build(cfg: RunConfig) -> tuple[MLP, LowRankTraining]:
    """The network and the training client of a configuration."""
    kind = {"dense": "dense", "vanilla": "factorized"}.get(cfg.integrator, "lowrank")
    net = MLP.from_arch(cfg.arch, kind=kind, rank=cfg.rank, last_dense=cfg.last_dense)
    name = cfg.integrator if cfg.integrator in INTEGRATORS else "augmented-bug"
    # the baselines have no low-rank layer: the integrator is never called.
    method = make_integrator(name, cfg.tau, cfg.rank, cfg.rmin, cfg.rmax)
    return net, LowRankTraining(method, net.gradient, make_optimizer(cfg))


@limited
def run_training(
    cfg: RunConfig,
    *,
    data: Dataset | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    stop_after: int | None = None,
    data_dir: str | Path | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate after every epoch, checkpoint after every epoch; return a summary.

    Parameters
    ----------
    data : Dataset, optional
        The data (default: ``load_dataset(cfg.dataset)`` cut to ``n_train``/``n_test``).
    checkpoint : path, optional
        Checkpoint file (one ``.npz``, see ``lowrank_integrators.training.checkpoint``),
        replaced atomically after every finite epoch.
    resume : bool
        Continue from ``checkpoint``. The checkpoint's configuration must agree with ``cfg``
        in everything but ``epochs`` (the error names the fields that differ) and every array
        must have the shape the configuration implies.
    stop_after : int, optional
        Stop after this many epochs of this call (as if interrupted).
    data_dir : path, optional
        Folder of the Fashion-MNIST files (default: the Debian package's folder).
    on_epoch : callable, optional
        Called with the history (a list of per-epoch records) after every finite epoch.

    Returns
    -------
    dict
        ``status`` ("success" or "diverged"), ``message``, ``history`` (per epoch: loss,
        accuracies, ranks, time), the final ``test_accuracy``, ``ranks``, parameter counts and
        compression rates, and the configuration.
    """
    log = log or (lambda s: None)
    dtype = np.dtype(cfg.dtype)
    net, client = build(cfg)
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, Any]] = []
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint file")
        state, meta = load_checkpoint(checkpoint)
        check_resumable(cfg, net, state, meta, checkpoint)
        rng.bit_generator.state = meta["rng"]
        history = meta["history"]
        log(f"resumed from epoch {len(history)} in {checkpoint}")
    else:
        weights, params = net.init(rng, dtype=dtype, singular_values=cfg.init_decay)
        state = client.init(weights, params)
    if data is None:
        data = load_dataset(cfg.dataset, dtype=dtype, path=data_dir).subset(cfg.n_train, cfg.n_test)
    widths = parse_arch(cfg.arch)
    if widths[0] != data.n_features or widths[-1] < data.n_classes:
        raise ValueError(
            f"arch {cfg.arch!r} does not fit {data.name}: {data.n_features} features and "
            f"{data.n_classes} classes"
        )
    status, message = "success", ""
    n_train = data.X_train.shape[0]
    n_batches = max(n_train // cfg.batch_size, 1)
    epochs_run = 0
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if stop_after is not None and epochs_run >= stop_after:
            break
        perm = rng.permutation(n_train)
        t0 = time.perf_counter()
        bar = None
        if progress:
            from .._progress import ProgressBar

            bar = ProgressBar(n_batches, label=f"epoch {epoch}/{cfg.epochs}")
        losses: list[float] = []
        passes = 0
        try:
            for b in range(n_batches):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                state, report = client.step(state, (data.X_train[idx], data.y_train[idx]), cfg.lr)
                losses.append(report.loss)
                passes += report.n_passes
                if bar is not None:
                    bar.update(1, postfix=f"loss {report.loss:.4f} ranks {list(state.ranks)}")
        except TrainingDiverged as exc:
            status = "diverged"
            kept = (
                f"; the checkpoint of epoch {epoch - 1} in {checkpoint} is kept"
                if (checkpoint is not None and epoch > 1)
                else ""
            )
            message = f"training diverged in epoch {epoch}: {exc}{kept}"
            break
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        test_loss, test_acc = net.loss_and_accuracy(
            state.weights, state.params, data.X_test, data.y_test
        )
        if not math.isfinite(test_loss):
            status = "diverged"
            message = f"training diverged in epoch {epoch}: the test loss is {test_loss}"
            break
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "test_loss": test_loss,
            "test_accuracy": test_acc,
            "ranks": list(state.ranks),
            "passes_per_step": passes / n_batches,
            "seconds": seconds,
        }
        history.append(record)
        epochs_run += 1
        log(
            f"epoch {epoch}: train loss {record['train_loss']:.4f}, test accuracy "
            f"{test_acc:.4f}, ranks {record['ranks']}, {seconds:.2f} s"
        )
        if checkpoint is not None:
            meta = {
                "config": dataclasses.asdict(cfg),
                "rng": rng.bit_generator.state,
                "history": history,
            }
            save_checkpoint(checkpoint, state, meta)
        if on_epoch is not None:
            on_epoch(history)
    return _summary(cfg, net, state, history, status, message)


def check_resumable(
    cfg: RunConfig, net: MLP, state: TrainState, meta: dict[str, Any], where: Any = "checkpoint"
) -> None:
    """Refuse to resume ``cfg`` from a checkpoint of another run or with arrays of other shapes.

    Raises
    ------
    ValueError
        Naming the configuration fields that differ, or the arrays whose shape or dtype does
        not match the network of ``cfg``.
    """
    try:
        saved = RunConfig(**meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: the stored configuration is not usable ({exc})") from None
    diff = saved.differences(cfg)
    if diff:
        fields = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in _rows(diff))
        raise ValueError(
            f"{where} belongs to a different run ({fields}); only --epochs may change when resuming"
        )
    for key in ("rng", "history"):
        if key not in meta:
            raise ValueError(f"{where}: the checkpoint has no {key!r} entry")
    problems = state_mismatches(net, state, np.dtype(cfg.dtype))
    if problems:
        raise ValueError(f"{where} does not fit the configured network: " + "; ".join(problems))


def _rows(diff: dict[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in diff.items()]


#: Moments and bases of an optimizer's layer state by the side they live on: 0 = the output
#: side (``n_out`` rows, like ``U``), 1 = the input side (``n_in`` rows, like ``V``).
_SLOT_ROWS = {
    "right_m": 0,
    "right_v": 0,
    "right_b0": 1,
    "left_m": 1,
    "left_v": 1,
    "left_b0": 0,
    "project_b0": 0,
    "project_b1": 1,
}


def state_mismatches(net: MLP, state: TrainState, dtype: np.dtype) -> list[str]:
    """Every array of ``state`` whose shape or dtype differs from what ``net`` implies."""
    out: list[str] = []

    def expect(name: str, array: Any, shape: tuple[int, ...]) -> None:
        a = np.asarray(array)
        if a.shape != shape:
            out.append(f"{name} has shape {a.shape}, expected {shape}")
        elif a.dtype != dtype:
            out.append(f"{name} has dtype {a.dtype}, expected {dtype}")

    def factors(name: str, U: Any, S: Any, V: Any, m: int, n: int) -> None:
        r = np.shape(S)[0] if np.ndim(S) == 2 else -1
        if not 1 <= r <= min(m, n):
            out.append(
                f"{name}.S has shape {np.shape(S)}, expected (r, r) with 1 <= r <= {min(m, n)}"
            )
            return
        expect(f"{name}.U", U, (m, r))
        expect(f"{name}.S", S, (r, r))
        expect(f"{name}.V", V, (n, r))

    lowrank = [lay for lay in net.layers if lay.kind == "lowrank"]
    if len(state.layers) != len(lowrank):
        out.append(f"{len(state.layers)} low-rank layers stored, expected {len(lowrank)}")
    else:
        for i, (lay, st) in enumerate(zip(lowrank, state.layers, strict=True)):
            factors(f"layer{i}", *st.Y, lay.n_out, lay.n_in)
            slot = state.optimizer["layers"][i] if i < len(state.optimizer["layers"]) else {}
            if {"U", "S", "V"} <= slot.keys():
                factors(f"optimizer layer{i}", slot["U"], slot["S"], slot["V"], lay.n_out, lay.n_in)
            for key, value in slot.items():
                rows = _SLOT_ROWS.get(key)
                if rows is not None and np.shape(value)[:1] != ((lay.n_out, lay.n_in)[rows],):
                    out.append(
                        f"optimizer layer{i}.{key} has shape {np.shape(value)}, expected "
                        f"{(lay.n_out, lay.n_in)[rows]} rows"
                    )
    shapes: list[tuple[int, ...]] = []
    for lay in net.layers:
        if lay.kind == "dense":
            shapes.append((lay.n_out, lay.n_in))
        elif lay.kind == "factorized":
            shapes += [(lay.n_out, int(lay.rank)), (lay.n_in, int(lay.rank))]
        shapes.append((lay.n_out,))
    if len(state.params) != len(shapes):
        out.append(f"{len(state.params)} other parameters stored, expected {len(shapes)}")
    else:
        for j, (p, shape) in enumerate(zip(state.params, shapes, strict=True)):
            expect(f"param{j}", p, shape)
            slot = state.optimizer["params"][j] if j < len(state.optimizer["params"]) else {}
            for key, value in slot.items():
                if value is not None:
                    expect(f"optimizer param{j}.{key}", value, shape)
    return out


def _summary(
    cfg: RunConfig,
    net: MLP,
    state: TrainState,
    history: list[dict[str, Any]],
    status: str,
    message: str,
) -> dict[str, Any]:
    counts = net.parameter_counts(state.ranks)
    dense = counts["dense"]
    last = history[-1] if history else {}
    return {
        "status": status,
        "message": message,
        "config": dataclasses.asdict(cfg),
        "epochs_completed": len(history),
        "test_accuracy": last.get("test_accuracy"),
        "ranks": list(state.ranks),
        "parameters": counts,
        "compression_evaluation": 1.0 - counts["evaluation"] / dense,
        "compression_training": 1.0 - counts["training"] / dense,
        "seconds_per_epoch": (float(np.mean([h["seconds"] for h in history])) if history else None),
        "history": history,
    }
