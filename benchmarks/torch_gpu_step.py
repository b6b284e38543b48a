"""One training step on an accelerator: DLRT against dense training, side by side.

The network 784-W-W-10 of Schotthöfer et al. (2022, arXiv:2205.13571) with ReLU activations,
float32, a batch of ``--batch-size`` generated inputs and labels on the device (the time of a
step does not depend on the data), at each width ``W`` of ``--widths``:

* ``dense``: ``opt.zero_grad(); loss.backward(); opt.step()`` with ``torch.optim.SGD``;
* ``dlrt``: the same loop on the model converted to rank ``--rank`` (``convert``, the last layer
  kept dense) with ``DLRTOptimizer`` and the augmented BUG with Euler substeps truncated to the
  fixed rank, so that every step has the same shapes.

A third model, ``dlrt-tested``, takes the same DLRT steps with every test of a new basis (the
Cholesky passes of its QR, its orthogonality to the old basis) read back as it is made,
instead of on the device and with the rank decision: the figure for what that costs. The
models alternate step by step. A step is timed from a synchronised device to a
synchronised device (wall clock); printed are the medians, dense / DLRT, the memory a step
allocates beyond the model and its optimizer state (peak), and for CUDA the number of times a
DLRT step waits for the device (``torch.cuda.set_sync_debug_mode``): the rank decisions read
a few numbers back per layer, nothing else should.

Example (on a machine with a CUDA device)::

    python benchmarks/torch_gpu_step.py --device cuda --widths 4096 8192 --rank 64 \\
        --out torch_gpu_step.json

``--quick`` runs width 64 at rank 4 with a few repetitions on any device (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import platform
import pstats
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from lowrank_integrators import AugmentedBUG, Euler, FixedRank, _backend
from lowrank_integrators.torch import DLRTOptimizer, convert, mlp


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: Any, y: Any) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def _timed_step(model, opt, x, y, device) -> float:
    _synchronize(device)
    t = time.perf_counter()
    _step(model, opt, x, y)
    _synchronize(device)
    return time.perf_counter() - t


def _peak_bytes(model, opt, x, y, device) -> int | None:
    """Bytes a step allocates at its peak beyond what is allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    _synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _step(model, opt, x, y)
    _synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def _host_syncs(model, opt, x, y, device) -> int | None:
    """How often one step waits for the device (CUDA only)."""
    if device.type != "cuda":
        return None
    _synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _step(model, opt, x, y)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_steps(model, opt, x, y, device, steps: int = 2, top: int = 20) -> str:
    """The functions that took the most time (their own, then with callees) over ``steps``
    steps, as cProfile prints them: where a slow step spends its time, waits included."""
    _synchronize(device)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        _step(model, opt, x, y)
    _synchronize(device)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


def compare(
    width: int,
    rank: int,
    batch: int,
    reps: int,
    lr: float,
    device: torch.device,
    profile: bool = False,
) -> dict:
    """Dense against DLRT at one width: median seconds per step and the diagnostics; with
    ``profile``, first the cProfile of two DLRT steps after the warm-up."""
    torch.manual_seed(0)
    dense = mlp([784, width, width, 10]).to(device)
    lowrank = convert(copy.deepcopy(dense), rank, exclude=("fc3",))
    tested = copy.deepcopy(lowrank)

    def dlrt(model):
        method = AugmentedBUG(FixedRank(rank), substep=Euler())
        return model, DLRTOptimizer(model.parameters(), lr=lr, method=method)

    # "dlrt-tested": the same step with every test of a new basis read back as it is made
    models = {
        "dense": (dense, torch.optim.SGD(dense.parameters(), lr=lr)),
        "dlrt": dlrt(lowrank),
        "dlrt-tested": dlrt(tested),
    }
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, 784, device=device, generator=g)
    y = torch.randint(0, 10, (batch,), device=device, generator=g)
    for i in range(3):  # warm-up: kernels chosen, work arrays allocated
        for name, (model, opt) in models.items():
            with _tests_read_as_made(name == "dlrt-tested"):
                seconds = _timed_step(model, opt, x, y, device)
            if i == 0:  # progress, and a clue where a run that stops at its limit was
                print(f"  width {width}, {name}: first step {1e3 * seconds:.1f} ms", flush=True)
    if profile:
        print(profile_steps(*models["dlrt"], x, y, device), flush=True)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(reps):
        for name, (model, opt) in models.items():
            with _tests_read_as_made(name == "dlrt-tested"):
                times[name].append(_timed_step(model, opt, x, y, device))
    med = {name: statistics.median(v) for name, v in times.items()}
    syncs = {}
    for name in ("dlrt", "dlrt-tested"):
        with _tests_read_as_made(name == "dlrt-tested"):
            syncs[name] = _host_syncs(*models[name], x, y, device)
    return {
        "width": width,
        "rank": rank,
        "median_seconds": med,
        "dense_over_dlrt": med["dense"] / med["dlrt"],
        "deferred_over_tested": med["dlrt"] / med["dlrt-tested"],
        "peak_step_bytes": {n: _peak_bytes(m, o, x, y, device) for n, (m, o) in models.items()},
        "dlrt_host_syncs_per_step": syncs["dlrt"],
        "dlrt_tested_host_syncs_per_step": syncs["dlrt-tested"],
    }


@contextlib.contextmanager
def _tests_read_as_made(on: bool):
    """The library's QR and basis tests read back one by one (``on``), or kept on the device
    and read with the rank decision (the default on an accelerator)."""
    before = _backend._DEFER
    _backend._DEFER = not on
    try:
        yield
    finally:
        _backend._DEFER = before


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--widths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--quick", action="store_true", help="width 64, rank 4, 3 repetitions")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print the cProfile of two DLRT steps at the first width before timing",
    )
    p.add_argument("--out", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no CUDA device here")
    if args.quick:
        args.widths, args.rank, args.reps = [64], 4, 3
    rows = []
    for i, width in enumerate(args.widths):
        profile = args.profile and i == 0
        row = compare(width, args.rank, args.batch_size, args.reps, args.lr, device, profile)
        rows.append(row)
        med = row["median_seconds"]
        peaks = row["peak_step_bytes"]
        extra = ""
        if peaks["dense"] is not None:
            extra = (
                f"; step peak {peaks['dense'] / 2**20:.0f} / {peaks['dlrt'] / 2**20:.0f} MiB, "
                f"{row['dlrt_host_syncs_per_step']} host syncs per DLRT step "
                f"({row['dlrt_tested_host_syncs_per_step']} with every test read as made)"
            )
        print(
            f"784-{width}-{width}-10, rank {args.rank}, batch {args.batch_size}, {device}: dense "
            f"{1e3 * med['dense']:.2f} ms, DLRT {1e3 * med['dlrt']:.2f} ms per step, dense / "
            f"DLRT {row['dense_over_dlrt']:.2f}; DLRT with every test read as made "
            f"{1e3 * med['dlrt-tested']:.2f} ms ({row['deferred_over_tested']:.2f}){extra}"
        )
    result = {
        "command": "python benchmarks/torch_gpu_step.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "batch_size": args.batch_size,
        "reps": args.reps,
        "rows": rows,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
