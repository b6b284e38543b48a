"""Checks of what user code hands back: the products of a problem, the result of a substep.

A product must have the shape the step asked for and a dtype that casts safely into the
state's: real into complex, lower into higher precision. Such a product is cast (a real
``F = 0`` for a complex state, a ``float32`` field for a ``float64`` state); any other dtype
is a ``TypeError``, because casting it would silently drop an imaginary part or precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as bk

__all__ = [
    "SUPPORTED_DTYPES",
    "check_factor_dtype",
    "check_matrix_start",
    "check_product",
    "check_same_library",
]


def check_product(name: str, out: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``out`` checked against ``shape`` and cast to ``dtype`` when that is safe.

    Parameters
    ----------
    name : str
        What returned ``out``, for the message (e.g. ``"problem.apply_right"``).
    out : array
        The returned product.
    shape : tuple of int
        The shape the caller asked for.
    dtype : dtype
        The dtype of the state the product enters.

    Returns
    -------
    array
        ``out`` itself when it has ``dtype``, else ``out`` cast to ``dtype``.

    Raises
    ------
    ValueError
        When the shape differs.
    TypeError
        When ``out`` is not an array, has a non-floating dtype, or a dtype that does not cast
        safely into ``dtype`` (complex into real, higher into lower precision).
    """
    if type(out) is np.ndarray and out.dtype == dtype and out.shape == tuple(shape):
        return out  # the common case, checked without converting the shapes
    expected = tuple(int(e) for e in shape)
    if type(out) is not np.ndarray and not bk.is_array(out):
        raise TypeError(
            f"{name} returned {type(out).__name__}, expected an array of shape {expected}"
        )
    got = tuple(int(d) for d in out.shape)
    if got != expected:
        raise ValueError(f"{name} returned an array of shape {got}, expected {expected}")
    if out.dtype == dtype:
        return out
    xp = bk.namespace(out)
    if not xp.isdtype(out.dtype, ("real floating", "complex floating")):
        raise TypeError(
            f"{name} returned an array of dtype {out.dtype}; expected a floating dtype that "
            f"casts safely into the state's {dtype}"
        )
    if xp.result_type(out.dtype, dtype) != dtype:
        raise TypeError(
            f"{name} returned an array of dtype {out.dtype}, which does not cast safely into "
            f"the state's {dtype} (it would drop an imaginary part or precision); return "
            f"{dtype} (or a real or lower-precision dtype, which is cast)"
        )
    return xp.astype(out, dtype)


#: Floating dtypes LAPACK factorises (by name; half precision has no LAPACK routines).
SUPPORTED_DTYPES = ("float32", "float64", "complex64", "complex128")


def check_factor_dtype(name: str, x: Any) -> None:
    """``TypeError`` naming ``name`` unless the array ``x`` has a dtype LAPACK factorises."""
    xp = bk.namespace(x)
    if not xp.isdtype(x.dtype, ("real floating", "complex floating")):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if not any(x.dtype == getattr(xp, d, None) for d in SUPPORTED_DTYPES):
        raise TypeError(
            f"{name} has dtype {x.dtype}; the factorisations (QR, SVD) need one of "
            f"{', '.join(SUPPORTED_DTYPES)} (convert half precision to float32)"
        )


def check_matrix_start(method: Any, problem: Any, Y0: Any, t0: float) -> None:
    """What a matrix integrator checks before its first step: the problem kind, ``Y0``'s type
    and dtype, and whatever the problem checks of ``Y0`` (its ``check_state``). ``problem`` is
    ``None`` when the requests are answered by a driver without a problem object (training)."""
    from .factors import LowRankMatrix
    from .tensor_problems import TensorODE

    kind = type(method).__name__
    if isinstance(problem, TensorODE):
        raise TypeError(
            f"{kind} integrates matrix problems (MatrixODE such as SylvesterODE, DenseODE, "
            f"DataODE), got the tensor problem {type(problem).__name__}; use TuckerBUG or "
            "TuckerProjectorSplitting"
        )
    # No problem: the step's requests are answered by a driver of its own (training).
    missing = [
        m
        for m in ("apply_right", "apply_left", "project")
        if problem is not None and not hasattr(problem, m)
    ]
    if missing:
        raise TypeError(
            f"problem must be a MatrixODE (with apply_right, apply_left and project), got "
            f"{type(problem).__name__} without {', '.join(missing)}"
        )
    if not isinstance(Y0, LowRankMatrix):
        raise TypeError(
            f"Y0 must be a LowRankMatrix, got {type(Y0).__name__}; use "
            "LowRankMatrix.from_dense(A, rank=r) for a dense initial value"
        )
    for name, X in zip(("Y0.U", "Y0.S", "Y0.V"), Y0, strict=True):
        check_factor_dtype(name, X)
    check_state = getattr(problem, "check_state", None)
    if check_state is not None:
        check_state(Y0, t0)


def check_same_library(name: str, op: Any, like: Any) -> None:
    """``TypeError`` naming ``name`` when the array ``op`` and the state ``like`` come from
    different array libraries (a product of the two would fail mid-run)."""
    if bk.is_array(op):
        try:
            bk.namespace(op, like)
        except TypeError:
            raise TypeError(
                f"{name} is a {type(op).__module__}.{type(op).__name__} but the state's factors "
                f"are {type(like).__module__}.{type(like).__name__}: give both from one array "
                "library"
            ) from None
    elif type(op).__module__.startswith("scipy.") and not isinstance(like, np.ndarray):
        raise TypeError(
            f"{name} is a SciPy operator ({type(op).__name__}), which multiplies NumPy arrays "
            f"only, but the state's factors are {type(like).__module__}.{type(like).__name__}"
        )
