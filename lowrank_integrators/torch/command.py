"""``lowrank-integrators train --backend torch``: train a converted PyTorch model.

The model (:func:`~lowrank_integrators.torch.mlp` of ``--arch`` or
:func:`~lowrank_integrators.torch.lenet5`) is converted by
:func:`~lowrank_integrators.torch.convert` (the last layer stays dense unless ``--all-lowrank``)
and trained by :class:`~lowrank_integrators.torch.DLRTOptimizer` with the integrator of
``--integrator`` on ``--device``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np
import torch

from ..training.data import load_dataset
from ..training.experiment import make_integrator
from ..training.optimizers import SGD, Adam, HeavyBall
from .convert import convert
from .layers import FactoredLayer
from .models import lenet5, mlp
from .optimizer import DLRTOptimizer
from .tucker_layers import TuckerConv2d

__all__ = ["count_parameters", "layer_ranks", "run", "train_model"]


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Stored parameters of ``model``: dense equivalent, evaluation and training.

    ``dense``: every low-rank layer replaced by its full weight. ``evaluation``: what inference
    needs (``r (m + n)`` for ``W = U S V^T``, storing ``U S`` and ``V``; core and factors for
    Tucker). ``training``: what one step of the augmented integrators holds (bases of twice
    the rank and the augmented core). Biases and dense layers count everywhere.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    dict with int entries ``dense``, ``evaluation``, ``training``
    """
    dense = ev = tr = 0
    factor_ids = set()
    for module in model.modules():
        if isinstance(module, FactoredLayer):
            m, n, r = int(module.U.shape[0]), int(module.V.shape[0]), module.rank
            dense += m * n
            ev += r * (m + n)
            tr += 2 * r * (m + n) + 4 * r * r
            factor_ids |= {id(module.U), id(module.S), id(module.V)}
        elif isinstance(module, TuckerConv2d):
            shape = (module.out_channels, module.in_channels, *module.kernel_size)
            ranks = module.ranks
            dense += math.prod(shape)
            ev += math.prod(ranks) + sum(n * r for n, r in zip(shape, ranks, strict=True))
            aug = [min(2 * r, n) for n, r in zip(shape, ranks, strict=True)]
            tr += math.prod(aug) + sum(n * r for n, r in zip(shape, aug, strict=True))
            factor_ids |= {id(module.core)} | {id(getattr(module, f"U{i}")) for i in range(1, 5)}
    for p in model.parameters():
        if id(p) not in factor_ids:
            dense += p.numel()
            ev += p.numel()
            tr += p.numel()
    return {"dense": dense, "evaluation": ev, "training": tr}


def layer_ranks(model: torch.nn.Module) -> dict[str, Any]:
    """The rank (or Tucker ranks) of every low-rank layer, by qualified name."""
    out: dict[str, Any] = {}
    for name, module in model.named_modules():
        if isinstance(module, FactoredLayer):
            out[name] = module.rank
        elif isinstance(module, TuckerConv2d):
            out[name] = list(module.ranks)
    return out


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


@torch.no_grad()
def _accuracy(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, X.shape[0], batch):
        correct += int((model(X[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / max(1, X.shape[0])


def train_model(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    multi_pass: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Train ``model`` with ``opt`` for ``epochs`` and evaluate after each.

    Parameters
    ----------
    model : torch.nn.Module
    opt : torch.optim.Optimizer
    data : (X_train, y_train, X_test, y_test)
        Tensors on the model's device.
    epochs, batch_size : int
    seed : int
        Of the shuffling.
    multi_pass : bool
        Step with a closure (for the integrators that evaluate the gradient more than once).
    log : callable, optional
        Receives one line per epoch.

    Returns
    -------
    dict
        ``history`` (per epoch: mean loss, test accuracy, ranks per layer, CPU and wall seconds)
        and the final ``test_accuracy``, ``ranks``, ``parameters``, compression rates and
        ``seconds_per_epoch`` (wall clock).
    """
    X, y, Xt, yt = data
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.functional.cross_entropy
    history = []
    for epoch in range(1, epochs + 1):
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        total, count = 0.0, 0
        for idx in _batches(X.shape[0], batch_size, gen):
            idx = idx.to(X.device)
            xb, yb = X[idx], y[idx]

            def closure(xb: torch.Tensor = xb, yb: torch.Tensor = yb) -> torch.Tensor:
                opt.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                return loss

            if multi_pass:
                loss = opt.step(closure)
            else:
                loss = closure()
                opt.step()
            total += float(loss.detach()) * xb.shape[0]
            count += xb.shape[0]
        if X.device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
        acc = _accuracy(model, Xt, yt)
        rec = {
            "epoch": epoch,
            "loss": total / max(1, count),
            "test_accuracy": acc,
            "ranks": layer_ranks(model),
            "seconds": wall,
            "cpu_seconds": cpu,
        }
        history.append(rec)
        if log is not None:
            log(
                f"epoch {epoch}: loss {rec['loss']:.4f}, test accuracy {acc:.4f}, "
                f"ranks {rec['ranks']}, {wall:.1f} s"
            )
    counts = count_parameters(model)
    return {
        "history": history,
        "test_accuracy": history[-1]["test_accuracy"] if history else None,
        "ranks": layer_ranks(model),
        "parameters": counts,
        "compression_evaluation": 1.0 - counts["evaluation"] / counts["dense"],
        "compression_training": 1.0 - counts["training"] / counts["dense"],
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])) if history else None,
    }


def run(args: argparse.Namespace) -> int:
    """Run ``lowrank-integrators train --backend torch`` from parsed arguments.

    Writes ``model.pt`` (the state dict, any ranks), ``history.csv`` and ``summary.json`` into
    ``--out``, each replaced atomically; output paths are checked before any work.
    """
    from .._files import atomic_write, check_output_dir, check_output_file, write_json
    from ..training.outputs import write_history

    try:
        out = check_output_dir(args.out, "--out")
        if args.json:
            check_output_file(args.json, "--json")
        summary, model = _run(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with atomic_write(out / "model.pt", "wb") as fh:
        torch.save(model.state_dict(), fh)
    write_history(out, [{**h, "train_loss": h["loss"]} for h in summary["history"]])
    write_json(out / "summary.json", summary)
    p = summary["parameters"]
    print(f"test accuracy: {summary['test_accuracy']:.4f}")
    print(f"ranks per low-rank layer: {summary['ranks']}")
    print(
        f"parameters: dense {p['dense']}, evaluation {p['evaluation']} "
        f"(compression {100 * summary['compression_evaluation']:.1f}%), training {p['training']} "
        f"(compression {100 * summary['compression_training']:.1f}%)"
    )
    print(f"time per epoch: {summary['seconds_per_epoch']:.2f} s")
    if args.json:
        write_json(args.json, summary)
    print(f"model, history and summary written to {out}")
    return 0


def _run(args: argparse.Namespace) -> tuple[dict[str, Any], torch.nn.Module]:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda needs a CUDA device, and torch sees none")
    if args.integrator == "vanilla":
        raise ValueError("--backend torch trains the integrators and 'dense', not 'vanilla'")
    if args.resume or args.checkpoint:
        raise ValueError(
            "--checkpoint is for the NumPy backend; use torch.save with --backend torch"
        )
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    torch.manual_seed(args.seed)
    ds = load_dataset(args.dataset, dtype=np.dtype(args.dtype)).subset(args.n_train, args.n_test)
    if args.model == "lenet5":
        if ds.n_features != 784:
            raise ValueError(f"--model lenet5 needs 28 x 28 images (fashion-mnist), got {ds.name}")
        model = lenet5(ds.n_classes, dtype=dtype)
        shape: tuple[int, ...] = (-1, 1, 28, 28)
        last = "fc2"
    else:
        widths = [int(w) for w in args.arch.split("-")]
        if widths[0] != ds.n_features or widths[-1] < ds.n_classes:
            raise ValueError(
                f"arch {args.arch!r} does not fit {ds.name}: {ds.n_features} features and "
                f"{ds.n_classes} classes"
            )
        model = mlp(widths, dtype=dtype)
        shape = (-1, ds.n_features)
        last = f"fc{len(widths) - 1}"
    multi_pass = False
    method = None
    if args.integrator != "dense":
        exclude = () if args.all_lowrank else (last,)
        model = convert(model, args.rank, conv=args.conv, exclude=exclude)
        tau = None if args.tau < 0 else args.tau
        method = make_integrator(args.integrator, tau, args.rank, args.rmin, args.rmax)
        # the one-pass methods take the standard loop; the others a closure
        multi_pass = int(getattr(method, "passes_per_step", 1)) > 1
    model = model.to(args.device)
    direction = {"sgd": SGD(), "momentum": HeavyBall(args.momentum), "adam": Adam()}[args.optimizer]
    opt = DLRTOptimizer(
        model.parameters(), lr=args.lr, method=method, direction=direction, tau=max(args.tau, 1e-12)
    )

    def tensor(a: np.ndarray, s: tuple[int, ...] | None = None) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.reshape(s) if s is not None else t).to(args.device)

    data = (
        tensor(ds.X_train, shape),
        tensor(ds.y_train.astype(np.int64)),
        tensor(ds.X_test, shape),
        tensor(ds.y_test.astype(np.int64)),
    )
    log = None if args.no_progress else (lambda s: print(s, flush=True))
    summary = train_model(
        model,
        opt,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        multi_pass=multi_pass,
        log=log,
    )
    summary["config"] = {
        k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))
    }
    summary["status"] = "success"
    return summary, model
