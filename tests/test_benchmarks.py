"""The benchmarks still run against the library as it is, in forms a test can afford.

Their timings are not checked (speed is measured, not asserted): what is checked is that each
study runs to the end and reports what its docstring promises. Studies that need a data set
which does not ship with the tests (Fashion-MNIST) or an optional package skip cleanly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load(name: str):
    """A benchmark script as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_step_cost_times_every_method_against_both_floors(tmp_path):
    path = tmp_path / "run.json"
    printed = run("step_cost.py", "--n", "1024", "--r", "4", "--json", str(path))
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert {row["method"] for row in rows} == set(load("step_cost").METHOD_NAMES)
    for row in rows:
        assert row["median_s"] > 0 and row["floor_s"] > 0
        # the nested arrangement of the RK4 stages moves fewer bytes than the classical one
        assert 0 < row["nested_floor_s"] <= row["floor_s"]
        assert math.isclose(row["ratio_to_floor"], row["median_s"] / row["floor_s"])
        # the same floor at the rates the worker measured right before and after the method
        rates = row["adjacent_rates"]
        assert rates["dgemm"] > 0 and rates["bandwidth"] > 0 and set(rates["thin"]) >= {"8", "64"}
        adjacent = row["adjacent_floor_s"]
        assert adjacent > 0
        assert math.isclose(row["ratio_to_adjacent_floor"], row["median_s"] / adjacent)
        assert 0 <= row["median_sys_s"] <= row["max_sys_s"]
    assert "x nested" in printed and "x adj" in printed and "sys ms" in printed
    assert "# fresh memory: transparent huge pages" in printed
    assert set(data["memory"]) == {"thp", "numpy_madvise_hugepage", "malloc"}


def test_step_cost_records_what_decides_how_fresh_memory_arrives(monkeypatch):
    step_cost = load("step_cost")
    monkeypatch.setenv("NUMPY_MADVISE_HUGEPAGE", "0")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1073741824")
    settings = step_cost.memory_settings()
    assert settings["numpy_madvise_hugepage"] == "0"
    assert settings["malloc"]["MALLOC_MMAP_THRESHOLD_"] == "1073741824"
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    settings = step_cost.memory_settings()
    assert settings["numpy_madvise_hugepage"] is None
    assert "MALLOC_MMAP_THRESHOLD_" not in settings["malloc"]
    # the kernel's mode, where it has one, is the bracketed word of its setting
    assert settings["thp"] in {None, "always", "madvise", "never"}


def test_step_cost_summarizes_runs(tmp_path):
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"run{k}.json"))
        run("step_cost.py", "--n", "1024", "--r", "4", "--methods", "BUG", "--json", paths[-1])
    printed = run("step_cost.py", "--summarize", *paths)
    assert "BUG" in printed and "x floor min..max" in printed and "x adj min..max" in printed


def test_the_dlrt_floor_counts_every_operation_of_a_step():
    bench = load("dlrt_step")
    # per low-rank layer: the pass (5, or 6 with the input gradient), the K- and L-products,
    # per side two projections (4 products), a QR and a check, five Galerkin products, the
    # SVD and two products forming the new bases; the dense last layer: 3 products
    ops = bench.essential_operations("784-2048-2048-10", 32, 256)
    assert len(ops) == 27 + 28 + 3
    assert len(bench.essential_operations("784-500-500-500-500-10", 32, 256)) == 27 + 3 * 28 + 3
    assert ops.count(("svd", (64, 64))) == 2
    assert ("mm", (256, 784, 32)) in ops and ("mm", (256, 32, 784)) not in ops  # no input grad
    floor = bench.products_alone("64-16-16-10", 4, 8, 3, 0)
    assert floor["operations"] == 58 and floor["products_alone_ms"] > 0


def test_dlrt_step_quick_runs_where_fashion_mnist_is_installed():
    from lowrank_integrators.training.data import load_dataset

    try:
        load_dataset("fashion-mnist", dtype=np.float32)
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")
    printed = run("dlrt_step.py", "--quick")
    assert "dense/DLRT" in printed and "each alone" in printed and "break-even" in printed


def test_kept_storage_times_midpoint_steps_with_and_without_it(tmp_path):
    path = tmp_path / "kept.json"
    printed = run("kept_storage.py", "--quick", "--json", str(path))
    (pair,) = json.loads(path.read_text())["pairs"]
    kept, fresh = pair
    assert (kept["mode"], fresh["mode"]) == ("kept", "fresh")
    assert kept["median_s"] > 0 and fresh["median_s"] > 0
    # n = 2^14, r = 16: two n x 4r float64 arrays kept, none where the storage is off
    assert kept["kept_mb"] == 2 * 2**14 * 64 * 8 / 2**20 and fresh["kept_mb"] == 0
    assert "median difference" in printed


def test_tucker_step_cost_runs():
    printed = run("tucker_step_cost.py", "--n", "8", "--rank", "3", "--repeats", "20")
    assert "Python overhead" in printed


def test_dask_step_quick_runs():
    pytest.importorskip("dask.array")
    pytest.importorskip("distributed")
    printed = run("dask_step.py", "--quick")
    assert "BUG" in printed


def test_the_lenet5_step_floor_follows_each_layers_route():
    torch = pytest.importorskip("torch")
    from lowrank_integrators.torch import convert, lenet5

    bench = load("lenet5_fashion_mnist")
    model = convert(lenet5(), 11, exclude=("fc2",))
    xb = torch.randn(4, 1, 28, 28)
    assert bench.essential_step_work(model, xb, reps=1) > 0
    rand = torch.randn
    # conv1 at rank 11 forms its kernel gradient in the pass: one small product for the new
    # block; conv2 at rank 11 convolves the input with the new filters (three operations)
    conv1 = bench._essential_ops(model.conv1, (4, 1, 28, 28), (4, 20, 24, 24), rand)
    conv2 = bench._essential_ops(model.conv2, (4, 20, 12, 12), (4, 50, 8, 8), rand)
    fc1 = bench._essential_ops(model.fc1, (4, 800), (4, 500), rand)
    assert model.conv1.forms_gradient(11) and not model.conv2.forms_gradient(11)
    assert (len(conv1), len(conv2), len(fc1)) == (10, 12, 12)
    for op in conv1 + conv2 + fc1:
        op()


def test_the_gpu_step_benchmark_runs_on_any_device_in_its_quick_mode(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "gpu.json"
    printed = run("torch_gpu_step.py", "--quick", "--device", "cpu", "--out", str(path))
    (row,) = json.loads(path.read_text())["rows"]
    assert row["width"] == 64 and row["rank"] == 4
    med = row["median_seconds"]
    assert med["dense"] > 0 and med["dlrt"] > 0
    assert math.isclose(row["dense_over_dlrt"], med["dense"] / med["dlrt"])
    # the same DLRT steps with every test of a new basis read back as it is made
    assert med["dlrt-tested"] > 0
    assert math.isclose(row["deferred_over_tested"], med["dlrt"] / med["dlrt-tested"])
    # the device diagnostics are CUDA's: absent on the CPU, not made up
    assert row["dlrt_host_syncs_per_step"] is None
    assert row["dlrt_tested_host_syncs_per_step"] is None
    assert row["peak_step_bytes"] == {"dense": None, "dlrt": None, "dlrt-tested": None}
    assert "dense / DLRT" in printed and "read as made" in printed


def test_the_gpu_step_benchmark_profiles_two_dlrt_steps_on_request():
    pytest.importorskip("torch")
    printed = run("torch_gpu_step.py", "--quick", "--device", "cpu", "--profile")
    assert "Ordered by: internal time" in printed and "Ordered by: cumulative time" in printed
    assert "optimizer.py" in printed  # the DLRT optimizer's own step is among the functions


def test_the_device_step_cost_benchmark_runs_its_driver_on_numpy(tmp_path):
    path = tmp_path / "gpu_step_cost.json"
    printed = run(
        "gpu_step_cost.py", "--quick", "--backend", "numpy", "--methods", "BUG", "MidpointBUG",
        "--out", str(path),
    )  # fmt: skip
    result = json.loads(path.read_text())
    assert [row["method"] for row in result["rows"]] == ["BUG", "MidpointBUG"]
    for row in result["rows"]:
        assert row["floor_s"] > 0 and row["median_s"] > 0
        assert math.isclose(row["ratio_to_floor"], row["median_s"] / row["floor_s"])
    # the agreement check covers every method: NumPy against itself, to round-off
    diffs = result["agreement_with_numpy"]["float64"]
    assert set(diffs) == {"KSL", "Strang", "BUG", "AugmentedBUG", "ParallelBUG",
                          "MidpointBUG", "abc-PSI"}  # fmt: skip
    assert max(diffs.values()) <= 1e-13
    assert "x floor" in printed and "agreement with NumPy" in printed


def test_the_factored_difference_of_the_device_benchmark_is_the_frobenius_norm(rng):
    import lowrank_integrators as lri

    difference = load("gpu_step_cost").relative_difference
    Z = lri.LowRankMatrix(rng.standard_normal((30, 3)), rng.standard_normal((3, 2)),
                          rng.standard_normal((25, 2)), check=False)  # fmt: skip
    Y = lri.LowRankMatrix(rng.standard_normal((30, 4)), rng.standard_normal((4, 4)),
                          rng.standard_normal((25, 4)), check=False)  # fmt: skip
    dense = np.linalg.norm(Y.to_dense() - Z.to_dense()) / np.linalg.norm(Z.to_dense())
    assert math.isclose(difference(Y, Z), dense, rel_tol=1e-12)


def test_the_gpu_checks_refuse_to_run_without_an_output_directory():
    out = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_checks.sh")], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0 and "usage" in out.stderr


def test_the_careful_lenet5_step_is_the_library_step_up_to_round_off():
    # the benchmark's direct torch implementation times the same algorithm as DLRTOptimizer
    torch = pytest.importorskip("torch")
    from lowrank_integrators import AugmentedBUG, Euler, Tolerance
    from lowrank_integrators.torch import DLRTOptimizer, convert, lenet5

    bench = load("lenet5_fashion_mnist")
    g = torch.Generator().manual_seed(7)
    # a batch larger than twice the rank: no layer's new columns are rank-deficient, so that
    # the two steps see the same directions (both fill a deficient basis by rounding)
    x = torch.randn(40, 1, 28, 28, dtype=torch.float64, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    models = []
    for _ in range(2):
        torch.manual_seed(3)
        models.append(convert(lenet5(dtype=torch.float64), 12, exclude=("fc2",)))
    library, careful = models
    rule = Tolerance(0.1, relative=True, rmin=2)
    opts = [
        DLRTOptimizer(library.parameters(), lr=0.5, method=AugmentedBUG(rule, substep=Euler())),
        bench.CarefulDLRT(careful, 0.5, 0.1, rmin=2),
    ]
    for model, opt in zip(models, opts, strict=True):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for name in ("conv1", "conv2", "fc1"):
        a, b = getattr(library, name), getattr(careful, name)
        assert a.rank == b.rank
        Wa, Wb = a.U @ a.S @ a.V.T, b.U @ b.S @ b.V.T
        torch.testing.assert_close(Wa, Wb, rtol=1e-10, atol=1e-12)
    for pa, pb in zip(library.fc2.parameters(), careful.fc2.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-14)
