"""Checks of what user code hands back: the products of a problem, the result of a substep.

A product must have the shape the step asked for and a dtype that casts safely into the
state's: real into complex, lower into higher precision. Such a product is cast (a real
``F = 0`` for a complex state, a ``float32`` field for a ``float64`` state); any other dtype
is a ``TypeError``, because casting it would silently drop an imaginary part or precision.
"""

from __future__ import annotations

from typing import Any

from . import _backend as bk

__all__ = ["check_product"]


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
    expected = tuple(int(e) for e in shape)
    if not bk.is_array(out):
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
