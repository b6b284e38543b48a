"""Shared fixtures: the array namespaces every backend-generic test runs on."""

from __future__ import annotations

import importlib

import numpy as np
import pytest


def _available_namespaces() -> list:
    params = [pytest.param("numpy", id="numpy"), pytest.param("array_api_strict", id="strict")]
    for name in ("cupy", "torch"):
        try:
            importlib.import_module(name)
        except Exception:  # not installed, or installed without a usable device
            params.append(
                pytest.param(name, id=name, marks=pytest.mark.skip(reason=f"{name} not installed"))
            )
        else:
            params.append(pytest.param(name, id=name))
    return params


@pytest.fixture(params=_available_namespaces())
def xp(request):
    """An array-API namespace: numpy and array-api-strict always, cupy/torch (their
    array-API namespaces from array-api-compat) when importable."""
    name = request.param
    if name == "numpy":
        return np
    if name == "cupy":
        cp = importlib.import_module("cupy")
        try:
            cp.cuda.runtime.getDeviceCount()
        except Exception:
            pytest.skip("cupy installed but no CUDA device")
        # the array-API namespace (``device=`` arguments and all), as for torch
        from array_api_compat import cupy as compat_cupy

        return compat_cupy
    if name == "torch":
        from array_api_compat import torch as compat_torch

        return compat_torch
    return importlib.import_module(name)


class _HostReads:
    """The numbers read back from PyTorch tensors so far (each a wait for a GPU)."""

    METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def host_reads(monkeypatch):
    """Counts, from here to the end of the test, every number read back from a PyTorch tensor
    (``count``, which the test may reset)."""
    torch = pytest.importorskip("torch")
    reads = _HostReads()
    for name in _HostReads.METHODS:
        original = getattr(torch.Tensor, name)

        def counted(tensor, *args, _original=original, **kwargs):
            reads.count += 1
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


@pytest.fixture
def deferred_tests(monkeypatch):
    """PyTorch tensors on the CPU keep their QR and basis tests on the device, as tensors on an
    accelerator do (the CPU has none to wait for; the route is tested here)."""
    from lowrank_integrators import _backend

    monkeypatch.setattr(_backend, "_DEFER_ON_CPU", True)


@pytest.fixture
def rng():
    """A fresh seeded generator per test (never a global seed)."""
    return np.random.default_rng(20261122)


def to_xp(xp, a, dtype=None):
    """Move a NumPy array into namespace ``xp``."""
    a = np.asarray(a)
    if dtype is not None:
        a = a.astype(dtype)
    return xp.asarray(a)


@pytest.fixture(params=[False, True], ids=["real", "complex"])
def euler_problem(request, rng):
    """A generic nonlinear field and a rank-3 start for the Euler closed-form identities."""
    from tests.problems_for_tests import generic_field, random_lowrank

    m, n, r = 14, 11, 3
    f = generic_field(rng, m, n, request.param)
    Y0 = random_lowrank(rng, m, n, r, sigmas=np.array([1.0, 0.3, 0.05]), complex_=request.param)
    return f, Y0
