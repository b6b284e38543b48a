"""Fine-tuning with adapters on Fashion-MNIST: GeoLoRA against PEFT's LoRA and AdaLoRA.

An MLP (784-256-256-10) is pretrained here on Fashion-MNIST and fine-tuned on a shifted task,
the same images rotated by 90 degrees (labels unchanged), by

* GeoLoRA (``lowrank_integrators.torch``: adapters of initial rank 8 on ``fc1`` and ``fc2``,
  parallel BUG with Euler substeps, relative tolerance ``tau``, Adam-type directions),
* GeoLoRA as above under a global budget of adapter parameters (``--budget``, by default
  what rank 8 in both layers takes),
* PEFT LoRA (rank 8, ``lora_alpha = 8``) with Adam,
* PEFT AdaLoRA (initial rank 12, target rank 8, its orthogonal regulariser and budget
  schedule) with Adam,
* full fine-tuning with Adam.

Every adapter method trains the head ``fc3`` in full (PEFT's ``modules_to_save``). All runs take
the same batches in the same order for the same number of epochs. Each method takes its own best
learning rate from a small grid, chosen by the accuracy on a validation split carved from the
fine-tuning training set; the test accuracy of that run is reported.

Reported per method: test accuracy; trainable parameters (at the start, and the most during
training); final adapter parameters (GeoLoRA ``r (m + n) + r^2`` per layer at the final rank,
LoRA ``r (m + n)``, AdaLoRA ``r (m + n) + r`` at the ranks its budget left unmasked; the head
is not counted); time per step (median CPU time of forward, backward and optimizer step over
all steps, one thread, ``time.process_time``), and of it the optimizer step (with AdaLoRA's
``update_and_allocate``); peak memory: the largest total size of the
tensor storages that the training steps allocate and keep alive at once (activations,
gradients, optimizer states, new factors; the frozen base weights, made before, are not
counted), tracked by a :class:`~torch.utils._python_dispatch.TorchDispatchMode` over the first
``--mem-steps`` steps of a second, identical run (the tracker slows the steps, so it never
runs while the time is measured); and the bytes of the trainable parameters, their gradients
and the optimizer state at the end of training. Every run is a fresh process. (The peak
resident set size of the process is no measure here: loading the data raises it more than
training these small models does.)

Needs the Debian package ``dataset-fashion-mnist``, the ``torch`` extra and the ``bench`` extra
(``peft``). The committed results were made with::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/finetune_adapters.py \\
        --out benchmarks/results/finetune_adapters.md

and with ``--seed 1 --out benchmarks/results/finetune_adapters_seed1.md`` and ``--seed 2 --out
benchmarks/results/finetune_adapters_seed2.md``; ``--quick`` runs a small version of everything
in about a minute.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lowrank_integrators.torch import GeoLoRA, LowRankAdapter, add_adapters
from lowrank_integrators.training.data import load_dataset

TARGETS = ["fc1", "fc2"]
HEAD = ["fc3"]


class MLP(torch.nn.Module):
    """784-256-256-10; with labels the output carries the loss (as PEFT's AdaLoRA expects)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 256)
        self.fc2 = torch.nn.Linear(256, 256)
        self.fc3 = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        h = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        logits = self.fc3(h)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


class PeakTensorMemory(TorchDispatchMode):
    """Tracks the storages that operations create while active: current and peak bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    nbytes = storage.nbytes()
                    self.live[key] = (StorageWeakRef(storage), nbytes)
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


# --- data and pretraining ------------------------------------------------------------------
def prepare(args: argparse.Namespace, path: Path) -> None:
    """Pretrain the MLP on Fashion-MNIST; store it with the rotated fine-tuning data."""
    ds = load_dataset("fashion-mnist", dtype=np.float32)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X = torch.from_numpy(ds.X_train[: args.n_pretrain])
    y = torch.from_numpy(ds.y_train[: args.n_pretrain])
    for _ in range(args.pretrain_epochs):
        for idx in np.array_split(rng.permutation(len(y)), max(1, len(y) // 128)):
            opt.zero_grad()
            model(X[idx], y[idx]).loss.backward()
            opt.step()

    def rotated(a: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(a).reshape(-1, 28, 28)
        return torch.rot90(img, 1, dims=(1, 2)).reshape(-1, 784).contiguous()

    # the fine-tuning set: training images the pretraining did not see (when there are any)
    start = args.n_pretrain if args.n_pretrain + args.n_finetune <= len(ds.y_train) else 0
    sl = slice(start, start + args.n_finetune)
    data = {
        "X": rotated(ds.X_train[sl]),
        "y": torch.from_numpy(ds.y_train[sl]),
        "X_test": rotated(ds.X_test[: args.n_test]),
        "y_test": torch.from_numpy(ds.y_test[: args.n_test]),
        "X_test_orig": torch.from_numpy(ds.X_test[: args.n_test]),
    }
    torch.save({"model": model.state_dict(), "data": data}, path)


def accuracy(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).logits.argmax(1) == y).float().mean())


# --- methods --------------------------------------------------------------------------------
def build(method: str, lr: float, args: argparse.Namespace, base: MLP, steps: int) -> Any:
    """``(model, optimizer, after_step)`` for one method."""
    torch.manual_seed(args.seed)  # PEFT draws its initial factors from the global generator
    if method == "full":
        return base, torch.optim.Adam(base.parameters(), lr=lr), None
    if method in ("geolora", "geolora-budget"):
        g = torch.Generator().manual_seed(args.seed)
        model = add_adapters(base, args.geolora_rank, targets=TARGETS, trainable=HEAD, generator=g)
        budget = args.budget if method == "geolora-budget" else None
        opt = GeoLoRA(model.parameters(), lr=lr, tau=args.tau, adam=True, budget=budget)
        return model, opt, None
    import peft

    if method == "lora":
        config = peft.LoraConfig(
            r=8, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, modules_to_save=HEAD
        )
        model = peft.get_peft_model(base, config)
        return model, torch.optim.Adam(model.parameters(), lr=lr), None
    if method == "adalora":
        config = peft.AdaLoraConfig(
            init_r=12,
            target_r=8,
            lora_alpha=8,
            lora_dropout=0.0,
            tinit=steps // 10,
            tfinal=steps // 5,
            deltaT=max(1, steps // 50),
            total_step=steps,
            target_modules=TARGETS,
            modules_to_save=HEAD,
        )
        model = peft.get_peft_model(base, config)
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def after_step(step: int) -> None:
            model.base_model.update_and_allocate(step)

        return model, opt, after_step
    raise ValueError(f"unknown method {method!r}")


def adapter_params(method: str, model: torch.nn.Module) -> int:
    """Adapter parameters at the end (the head and the frozen base not counted)."""
    if method == "full":
        return 0
    if method.startswith("geolora"):
        return sum(m.n_adapter_parameters for m in model.modules() if isinstance(m, LowRankAdapter))
    total = 0
    for name, mod in model.named_modules():
        if not any(name.endswith(t) for t in TARGETS) or not hasattr(mod, "lora_A"):
            continue
        m, n = mod.base_layer.out_features, mod.base_layer.in_features
        if method == "lora":
            r = int(mod.lora_A["default"].weight.shape[0])
            total += r * (m + n)
        else:
            r = int(torch.count_nonzero(mod.lora_E["default"]))
            total += r * (m + n) + r
    return total


def trainable_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the trainable parameters, their gradients and the optimizer's tensors now."""
    seen: set[int] = set()

    def walk(obj: Any) -> int:
        if isinstance(obj, torch.Tensor):
            if id(obj) in seen:
                return 0
            seen.add(id(obj))
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v) for v in obj)
        return 0

    params = [p for p in model.parameters() if p.requires_grad]
    return (
        walk(params) + walk([p.grad for p in params if p.grad is not None]) + walk(dict(opt.state))
    )


def train_steps(
    model: Any, opt: Any, after_step: Any, X: Any, y: Any, batches: Any, limit: int | None
) -> tuple[list[tuple[float, float]], list[float], int]:
    """Train over ``batches`` (at most ``limit`` steps).

    Returns the CPU times ``(whole step, optimizer step)`` of every step, the losses and the
    most parameters that required gradients at once.
    """
    times, losses = [], []
    trainable_max = trainable_count(model)
    step = 0
    for epoch in batches:
        for idx in epoch:
            if limit is not None and step >= limit:
                return times, losses, trainable_max
            t0 = time.process_time()
            opt.zero_grad()
            loss = model(X[idx], labels=y[idx]).loss
            loss.backward()
            t1 = time.process_time()
            opt.step()
            if after_step is not None:
                after_step(step)
            t2 = time.process_time()
            times.append((t2 - t0, t2 - t1))
            losses.append(float(loss.detach()))
            step += 1
            trainable_max = max(trainable_max, trainable_count(model))
    return times, losses, trainable_max


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One fine-tuning run in this (fresh) process."""
    torch.set_num_threads(1)
    args = SimpleNamespace(**job["args"])
    stored = torch.load(job["path"])
    data = stored["data"]

    def base_model() -> MLP:
        base = MLP()
        base.load_state_dict(stored["model"])
        return base

    base = base_model()
    n = len(data["y"])
    n_val = n // 6
    X, y = data["X"][n_val:], data["y"][n_val:]
    X_val, y_val = data["X"][:n_val], data["y"][:n_val]
    rng = np.random.default_rng(args.seed + 1)  # the same batches for every run
    batches = [
        np.array_split(rng.permutation(len(y)), max(1, len(y) // args.batch_size))
        for _ in range(args.epochs)
    ]
    steps = sum(len(b) for b in batches)
    before = accuracy(base, data["X_test"], data["y_test"])
    model, opt, after_step = build(job["method"], job["lr"], args, base, steps)
    trainable_start = trainable_count(model)
    times, losses, trainable_max = train_steps(model, opt, after_step, X, y, batches, None)
    model.eval()
    out = {
        "method": job["method"],
        "lr": job["lr"],
        "steps": steps,
        "val_accuracy": accuracy(model, X_val, y_val),
        "test_accuracy": accuracy(model, data["X_test"], data["y_test"]),
        "test_accuracy_before": before,
        "trainable_start": trainable_start,
        "trainable_max": trainable_max,
        "adapter_params": adapter_params(job["method"], model),
        "step_cpu_ms_median": 1e3 * statistics.median(t for t, _ in times),
        "step_cpu_ms_mean": 1e3 * statistics.fmean(t for t, _ in times),
        "optimizer_cpu_ms_median": 1e3 * statistics.median(u for _, u in times),
        "state_bytes": state_bytes(model, opt),
        "final_loss": statistics.fmean(losses[-10:]),
    }
    # the memory of the steps, in a second run of the first steps under the tracker
    model2, opt2, after2 = build(job["method"], job["lr"], args, base_model(), steps)
    with PeakTensorMemory() as tracker:
        train_steps(model2, opt2, after2, X, y, batches, args.mem_steps)
    out["peak_step_memory_bytes"] = tracker.peak
    if job["method"].startswith("geolora"):
        out["ranks"] = [m.rank for m in model.modules() if isinstance(m, LowRankAdapter)]
    if job["method"] == "adalora":
        out["ranks"] = [
            int(torch.count_nonzero(mod.lora_E["default"]))
            for name, mod in model.named_modules()
            if hasattr(mod, "lora_E") and any(name.endswith(t) for t in TARGETS)
        ]
    return out


# --- driver ---------------------------------------------------------------------------------
LABELS = {
    "geolora": "GeoLoRA (r0=8, tau={tau:g}, Adam)",
    "geolora-budget": "GeoLoRA (r0=8, tau={tau:g}, Adam, budget {budget})",
    "lora": "PEFT LoRA (r=8)",
    "adalora": "PEFT AdaLoRA (12 -> 8)",
    "full": "full fine-tuning",
}


def table(best: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (
        "| method | lr | test acc | trainable params (start / max) | final adapter params | "
        "ranks | CPU ms/step (median) | of which optimizer | peak step memory (KiB) | "
        "params+grads+opt state (KiB) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in best:
        label = LABELS[r["method"]].format(tau=args.tau, budget=args.budget)
        rows.append(
            f"| {label} | {r['lr']:g} | {r['test_accuracy']:.4f} | "
            f"{r['trainable_start']} / {r['trainable_max']} | {r['adapter_params']} | "
            f"{r.get('ranks', '-')} | {r['step_cpu_ms_median']:.2f} | "
            f"{r['optimizer_cpu_ms_median']:.2f} | "
            f"{r['peak_step_memory_bytes'] / 1024:.0f} | {r['state_bytes'] / 1024:.0f} |"
        )
    return head + "\n".join(rows) + "\n"


def grid_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Validation and test accuracy of every run of the grids (robustness to the lr)."""
    lines = ["| method | lr | val acc | test acc | final adapter params |", "|---|---|---|---|---|"]
    for r in results:
        label = LABELS[r["method"]].format(tau=args.tau, budget=args.budget)
        lines.append(
            f"| {label} | {r['lr']:g} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | "
            f"{r['adapter_params']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small version of everything")
    p.add_argument("--n-pretrain", type=int, default=50000)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--n-finetune", type=int, default=10000)
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--geolora-rank", type=int, default=8)
    p.add_argument("--budget", type=int, default=8 * (784 + 256 + 8) + 8 * (256 + 256 + 8))
    p.add_argument("--mem-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods", nargs="+", default=["geolora", "geolora-budget", "lora", "adalora", "full"]
    )
    p.add_argument("--out", type=Path, default=None, help="markdown table (and .json beside)")
    args = p.parse_args(argv)
    grids = {
        "geolora": [1e-3, 3e-3, 1e-2, 3e-2],
        "geolora-budget": [1e-3, 3e-3, 1e-2, 3e-2],
        "lora": [1e-3, 3e-3, 1e-2, 3e-2],
        "adalora": [1e-3, 3e-3, 1e-2, 3e-2],
        "full": [1e-4, 3e-4, 1e-3, 3e-3],
    }
    if args.quick:
        args.n_pretrain, args.pretrain_epochs = 5000, 1
        args.n_finetune, args.n_test, args.epochs = 1800, 1000, 1
        grids = {k: v[2:3] for k, v in grids.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pretrained.pt"
        t0 = time.process_time()
        prepare(args, path)
        print(f"pretrained in {time.process_time() - t0:.1f} s CPU", flush=True)
        jobs = [
            {"method": m, "lr": lr, "args": vars(args) | {"out": None}, "path": str(path)}
            for m in args.methods
            for lr in grids[m]
        ]
        ctx = multiprocessing.get_context("spawn")
        results = []
        for job in jobs:  # one at a time, each in a fresh process
            with ctx.Pool(1) as pool:
                r = pool.apply(run_one, (job,))
            print(json.dumps(r), flush=True)
            results.append(r)
    best = [
        max((r for r in results if r["method"] == m), key=lambda r: r["val_accuracy"])
        for m in args.methods
    ]
    text = table(best, args) + "\nEvery run of the grids:\n\n" + grid_table(results, args)
    print(text)
    if args.out is not None:
        cmd = " ".join(["python", "benchmarks/finetune_adapters.py", *(argv or sys.argv[1:])])
        info = (
            f"Command: `{cmd}` (with `OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1`)\n\n"
            f"torch {torch.__version__}, python {platform.python_version()}, "
            f"{platform.machine()}; pretrain {args.n_pretrain} images x "
            f"{args.pretrain_epochs} epochs; fine-tune on {args.n_finetune} rotated images "
            f"(1/6 of them for validation) x {args.epochs} epochs, batch {args.batch_size}, "
            f"{len(results) and results[0]['steps']} steps; test on {args.n_test} rotated "
            f"images (pretrained model: {results[0]['test_accuracy_before']:.4f}).\n\n"
            "Learning-rate grids (best by validation accuracy): "
            + "; ".join(f"{m}: {grids[m]}" for m in args.methods)
            + "\n\n"
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(info + text, encoding="utf-8")
        args.out.with_suffix(".json").write_text(
            json.dumps({"args": {**vars(args), "out": str(args.out)}, "runs": results}, indent=1),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
