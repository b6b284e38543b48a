r"""Rank-truncation rules.

A rule receives an unconverged factorisation ``(U_hat, S_hat, V_hat)`` of a matrix of
representation rank ``p = min(k, l)`` and returns a :class:`LowRankMatrix` of rank ``r1``
with a diagonal core, together with a :class:`TruncationRecord`. With the SVD
``S_hat = P diag(sigma) Q^H`` the result is ``U1 = U_hat P[:, :r1]``, ``S1 = diag(sigma[:r1])``
and ``V1 = V_hat Q[:, :r1]`` (``Q = Vh^H``: the right singular vectors are conjugate-
transposed back, never used as ``Vh[:, :r1]``).

This module is the only place where singular values move to the host: the rank decision
is a branch on numbers.

References
----------
Ceruti, G., Kusch, J., Lubich, C. (2022). A rank-adaptive robust integrator for dynamical
low-rank approximation. BIT 62, 1149-1174. arXiv:2104.05247 (the truncation rule).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as bk
from .factors import LowRankMatrix

__all__ = ["FixedRank", "Tolerance", "TruncationRecord", "TruncationRule", "tail_norms"]


@dataclass(frozen=True)
class TruncationRecord:
    """What one truncation decided.

    Attributes
    ----------
    rank_before : int
        Number of singular values available (``min(k, l)`` of the core).
    rank_after : int
        Number kept.
    tail : float
        Frobenius norm of the discarded singular values.
    tolerance : float
        The threshold ``tau`` the tail was compared with (``nan`` for a fixed rank).
    """

    rank_before: int
    rank_after: int
    tail: float
    tolerance: float


def tail_norms(sigma: np.ndarray, kind: str = "frobenius") -> np.ndarray:
    """Tails ``tail[j]`` of the singular values beyond the first ``j``, for ``j = 0..p``.

    ``kind="frobenius"`` gives ``(sum_{i>j} sigma_i^2)^(1/2)`` (the rule of CKL22);
    ``kind="sum"`` gives ``sum_{i>j} sigma_i``, the stricter tail computed in the authors'
    Matlab/Julia codes (which also keep one more value: ``Tolerance(keep_one_more=True)``).
    ``tail[p] = 0`` and the smallest singular value is always included.

    The squares are taken of ``sigma / max(sigma)``, so the tails neither overflow (sigma
    above ``1e154``) nor underflow to zero (sigma below ``1e-162``); multiplying ``sigma`` by a
    power of two multiplies every tail by it exactly. A tail is never below its own leading
    value ``sigma_{j+1}``, even where smaller squares underflow.
    """
    if type(sigma) is np.ndarray and 0 < sigma.size <= _SMALL_TAILS and sigma.ndim == 1:
        small = _small_tail_norms(sigma.tolist(), kind)
        if small is not None:
            return np.array(small)
    s = np.asarray(sigma, dtype=float)
    if kind == "frobenius":
        scale = float(s.max()) if s.size else 0.0
        if scale > 0 and math.isfinite(scale):
            # cumulative sums from the small end keep the tiny values from being swamped.
            rev = np.cumsum((s[::-1] / scale) ** 2)[::-1]
            tails = np.maximum(scale * np.sqrt(rev), s)
        else:
            tails = np.sqrt(np.cumsum(s[::-1] ** 2)[::-1])
    elif kind == "sum":
        tails = np.cumsum(s[::-1])[::-1]
    else:
        raise ValueError(f"tail kind must be 'frobenius' or 'sum', got {kind!r}")
    return np.concatenate([tails, [0.0]])


#: Singular values up to this many have their tails summed in Python floats.
_SMALL_TAILS = 32


def _small_tail_norms(s: list[float], kind: str) -> list[float] | None:
    """:func:`tail_norms` of a few finite values, the same operations in the same order.

    ``None`` where the NumPy path is needed (a value that is not finite, all zero, or an
    unknown kind, which it reports).
    """
    if kind == "frobenius":
        scale = max(s)
        if not (scale > 0 and math.isfinite(scale) and math.isfinite(sum(s))):
            return None  # zero, not finite, or too large to be summed as it is
        tails = [0.0] * (len(s) + 1)
        acc = 0.0
        for j in range(len(s) - 1, -1, -1):
            q = s[j] / scale
            acc += q * q
            t = scale * math.sqrt(acc)
            tails[j] = t if t >= s[j] else s[j]
        return tails
    if kind == "sum":
        if not math.isfinite(sum(s)):
            return None
        tails = [0.0] * (len(s) + 1)
        acc = 0.0
        for j in range(len(s) - 1, -1, -1):
            acc += s[j]
            tails[j] = acc
        return tails
    return None


def frobenius_norm(sigma: np.ndarray) -> float:
    """``||sigma||_2`` without overflow or underflow of the squares (``tail_norms(sigma)[0]``)."""
    s = np.asarray(sigma, dtype=float)
    return float(tail_norms(s)[0]) if s.size else 0.0


class TruncationRule(ABC):
    """A rank-truncation policy.

    Subclasses implement :meth:`select_rank`. ``mode`` is used by Tucker integrators, which
    truncate every mode separately.
    """

    @abstractmethod
    def select_rank(self, sigma: np.ndarray, h: float, mode: int | None = None) -> int:
        """Number of leading singular values of ``sigma`` (descending, on the host) to keep.

        At least 1 and at most ``sigma.size``: low-rank states have rank >= 1.
        """

    def tolerance(self, sigma: np.ndarray, h: float) -> float:
        """The threshold ``tau`` (``nan`` for rules without one)."""
        return math.nan

    def _decide(self, sigma: np.ndarray, h: float, mode: int | None) -> tuple[int, float, float]:
        """``(r1, tail, tau)``: :meth:`select_rank`, the Frobenius norm of the discarded values
        and :meth:`tolerance`, checked (the record of :meth:`truncate_core`)."""
        r1 = int(self.select_rank(sigma, h, mode))
        if not 1 <= r1 <= int(sigma.shape[0]):
            raise ValueError(
                f"{type(self).__name__}.select_rank chose rank {r1}; a rule must keep between "
                f"1 and the {int(sigma.shape[0])} available singular values"
            )
        return r1, float(tail_norms(sigma)[r1]), self.tolerance(sigma, h)

    def truncate_core(
        self, S_hat: Any, h: float, *, mode: int | None = None
    ) -> tuple[Any, Any, Any, TruncationRecord]:
        """The rank decision on the core alone: ``S_hat ~ P S1 Q^H`` with ``r1`` columns.

        Returns ``(P, S1, Q, record)``; the truncated factors are ``U_hat P`` and ``V_hat Q``.
        Integrators that form them one at a time (releasing ``U_hat`` before ``V_hat Q`` is
        formed) keep one tall array fewer alive than :meth:`truncate`.
        """
        if type(S_hat) is np.ndarray:  # the common case: no namespace, no host copy
            xp: Any = np
            P, sigma, Qh = bk.svd(S_hat)
            sig_host = sigma
        elif bk.svd_reports_non_finite(S_hat):
            # one value read back (the singular values) instead of a check before the SVD
            xp = bk.namespace_of(S_hat)
            P, sigma, Qh, sig_host = bk.svd_to_host(S_hat)
        else:
            S_hat = bk.core_array(S_hat)  # a lazy core is computed once, on the host
            xp = bk.namespace(S_hat)
            P, sigma, Qh = bk.svd(S_hat)
            sig_host = bk.to_host(sigma)
        r1, tail, tolerance = self._decide(sig_host, h, mode)
        if xp is np and sigma.dtype == S_hat.dtype:
            S1 = np.diag(sigma[:r1])  # eye * sigma: the same entries (sigma >= 0)
        elif xp is np:
            S1 = np.eye(r1, dtype=S_hat.dtype) * sigma[:r1].astype(S_hat.dtype)[None, :]
        elif sigma.dtype == S_hat.dtype and hasattr(xp, "diag"):
            S1 = xp.diag(sigma[:r1])  # eye * sigma: the same entries (sigma >= 0)
        else:
            eye = xp.eye(r1, dtype=S_hat.dtype, device=bk.device(S_hat))
            diag = sigma[:r1] if sigma.dtype == S_hat.dtype else xp.astype(sigma[:r1], S_hat.dtype)
            S1 = eye * diag  # diag scales the columns
        record = TruncationRecord(
            rank_before=int(sig_host.shape[0]), rank_after=r1, tail=tail, tolerance=tolerance
        )
        if xp is np and Qh.dtype.kind != "c":
            return P[:, :r1], S1, Qh[:r1, :].T, record
        return P[:, :r1], S1, bk.adjoint(Qh[:r1, :]), record

    def truncate(
        self, U_hat: Any, S_hat: Any, V_hat: Any, h: float, *, mode: int | None = None
    ) -> tuple[LowRankMatrix, TruncationRecord]:
        """Truncate ``U_hat S_hat V_hat^H``; see the module docstring."""
        bk.namespace(U_hat, S_hat, V_hat)
        P, S1, Q, record = self.truncate_core(S_hat, h, mode=mode)
        U1, V1 = bk.tall_times(U_hat, P), bk.tall_times(V_hat, Q)
        return LowRankMatrix(U1, S1, V1, check=False), record


class FixedRank(TruncationRule):
    """Keep a fixed number of singular values.

    Parameters
    ----------
    rank : int or sequence of int
        The rank (a tuple of per-mode ranks for Tucker tensors). When fewer singular values
        are available, all are kept.
    """

    def __init__(self, rank: int | Sequence[int]) -> None:
        if isinstance(rank, (tuple, list)):
            ranks = tuple(rank)
            if not ranks:
                raise ValueError("rank must not be an empty sequence")
            for r in ranks:
                _check_positive_int("rank", r)
            self.rank: int | tuple[int, ...] = tuple(int(r) for r in ranks)
        else:
            _check_positive_int("rank", rank)
            self.rank = int(rank)

    def select_rank(self, sigma: np.ndarray, h: float, mode: int | None = None) -> int:
        if isinstance(self.rank, tuple):
            if mode is None:
                raise ValueError("a FixedRank with per-mode ranks needs the mode")
            if mode >= len(self.rank):
                raise ValueError(f"FixedRank has {len(self.rank)} ranks; mode {mode} requested")
            r = self.rank[mode]
        else:
            r = self.rank
        return min(r, int(np.size(sigma)))

    def __repr__(self) -> str:
        return f"FixedRank({self.rank!r})"


class Tolerance(TruncationRule):
    r"""Keep the fewest singular values whose discarded tail is at most a tolerance.

    The new rank is the smallest ``r1 >= 0`` with ``tail(r1) <= tau``, clamped to
    ``[rmin, min(rmax, p)]`` (so never below 1), where ``tau = theta``, times ``||sigma||_2``
    if ``relative``, times ``h**q`` if ``scale_with_h`` (``q = 1`` for ``True``, or the number
    given). With ``keep_one_more`` it is ``min(j + 1, p)`` instead, ``j`` the smallest rank with
    ``tail(j) < tau`` (``p`` if there is none), before the same clamps.

    The rule of Ceruti, Kusch, Lubich (2022, arXiv:2104.05247) is the default (Frobenius tail,
    smallest rank). The authors' Matlab/Julia codes (CKL22, the parallel BUG of Ceruti, Kusch,
    Lubich 2024, arXiv:2304.05660, Kusch 2024, arXiv:2403.02834) differ in two ways: they sum
    the discarded singular values, and their loop keeps the first value whose tail is below
    ``tau`` as well, one more than the smallest rank that meets the criterion. Only both
    together, ``Tolerance(theta, tail="sum", keep_one_more=True)``, reproduce their truncation;
    ``tail="sum"`` alone does not.

    Parameters
    ----------
    theta : float
        Non-negative tolerance.
    relative : bool, default False
        Scale by the Frobenius norm of the core (the DLRT convention ``||sigma_tail|| <= theta
        ||sigma||``).
    scale_with_h : bool or float, default False
        Scale by ``h`` (or ``h**q``). A fixed absolute tolerance accumulates ``n theta``
        over ``n = T/h`` steps, so the error of a rank-adaptive method *grows* as ``h``
        shrinks; ``theta h^2`` keeps first-order methods first order, ``theta h^3``
        second-order ones.
    rmin, rmax : int
        Clamps on the new rank (``rmax=None``: no upper clamp besides ``p``). ``rmin >= 1``:
        a state never drops to rank 0. A rank-0 state has no basis into which new directions
        could enter (every K-step starts from ``U0 S0 = 0`` in an empty basis), so a method
        would stay at rank 0 for good, even after a source switches on.
    tail : {"frobenius", "sum"}
        ``"frobenius"`` is the rule of Ceruti-Kusch-Lubich (2022); ``"sum"`` compares the sum
        of the discarded singular values (the tail the authors' Matlab/Julia codes compute).
    keep_one_more : bool, default False
        Keep one singular value beyond the smallest rank whose tail is strictly below ``tau``,
        as the authors' codes do; with ``tail="sum"`` this is their truncation.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_integrators as lri
    >>> sigma = np.array([1.0, 0.1, 0.01, 0.001])
    >>> lri.Tolerance(0.05).select_rank(sigma, h=1.0)  # Frobenius tail, smallest rank
    2
    >>> lri.Tolerance(0.05, tail="sum", keep_one_more=True).select_rank(sigma, h=1.0)
    3
    """

    def __init__(
        self,
        theta: float,
        relative: bool = False,
        scale_with_h: bool | float = False,
        rmin: int = 1,
        rmax: int | None = None,
        *,
        tail: str = "frobenius",
        keep_one_more: bool = False,
    ) -> None:
        if isinstance(theta, bool) or not isinstance(theta, numbers.Real):
            raise TypeError(f"theta must be a real number, got {type(theta).__name__}")
        theta = float(theta)
        if not math.isfinite(theta) or theta < 0:
            raise ValueError(f"theta must be a finite non-negative number, got {theta}")
        if isinstance(scale_with_h, (bool, np.bool_)):
            power = 1.0 if scale_with_h else 0.0
        elif (
            isinstance(scale_with_h, numbers.Real)
            and math.isfinite(scale_with_h)
            and scale_with_h > 0
        ):
            power = float(scale_with_h)
        else:
            raise ValueError(
                f"scale_with_h must be a bool or a finite positive power of h, got {scale_with_h!r}"
            )
        _check_positive_int("rmin", rmin)
        if rmax is not None:
            _check_positive_int("rmax", rmax)
            if rmax < rmin:
                raise ValueError(f"rmax = {rmax} must be >= rmin = {rmin}")
        if tail not in ("frobenius", "sum"):
            raise ValueError(f"tail must be 'frobenius' or 'sum', got {tail!r}")
        if not isinstance(keep_one_more, bool):
            raise TypeError(f"keep_one_more must be a bool, got {type(keep_one_more).__name__}")
        self.theta = theta
        self.relative = bool(relative)
        if isinstance(scale_with_h, np.generic):
            scale_with_h = scale_with_h.item()  # numpy scalars: the equal Python number
        self.scale_with_h = scale_with_h
        self._power = power
        self.rmin = int(rmin)
        self.rmax = None if rmax is None else int(rmax)
        self.tail = tail
        self.keep_one_more = keep_one_more

    def tolerance(self, sigma: np.ndarray, h: float) -> float:
        tau = self.theta
        if self.relative:
            tau *= frobenius_norm(sigma)
        if self._power:
            tau *= float(h) ** self._power
        return tau

    def select_rank(self, sigma: np.ndarray, h: float, mode: int | None = None) -> int:
        tails = tail_norms(sigma, self.tail)
        return self._rank_from_tails(tails, self.tolerance(sigma, h), int(np.size(sigma)))

    def _decide(self, sigma: np.ndarray, h: float, mode: int | None) -> tuple[int, float, float]:
        if type(self).select_rank is not Tolerance.select_rank or (
            type(self).tolerance is not Tolerance.tolerance
        ):
            return super()._decide(sigma, h, mode)  # a subclass decides in its own way
        # the Frobenius tails serve the relative tolerance (their first entry), the rank
        # (unless the rule sums the tail) and the record: computed once, not three times
        frob = tail_norms(sigma)
        tails = frob if self.tail == "frobenius" else tail_norms(sigma, self.tail)
        tau = self.theta
        if self.relative:
            tau *= float(frob[0]) if np.size(sigma) else 0.0
        if self._power:
            tau *= float(h) ** self._power
        r1 = self._rank_from_tails(tails, tau, int(np.size(sigma)))
        if r1 < 1:  # no singular value to keep (an empty core)
            return super()._decide(sigma, h, mode)  # which reports it
        return r1, float(frob[r1]), tau

    def _rank_from_tails(self, tails: np.ndarray, tau: float, p: int) -> int:
        """The rank :meth:`select_rank` keeps, from the tails and the threshold."""
        # tails is non-increasing, so the first index at or below tau is the smallest rank.
        if self.keep_one_more:
            below = tails < tau
            r1 = min(int(np.argmax(below)) + 1, p) if below.any() else p
        else:
            r1 = int(np.argmax(tails <= tau))
        upper = p if self.rmax is None else min(self.rmax, p)
        return max(min(r1, upper), min(self.rmin, upper))

    def __repr__(self) -> str:
        return (
            f"Tolerance({self.theta!r}, relative={self.relative}, scale_with_h="
            f"{self.scale_with_h!r}, rmin={self.rmin}, rmax={self.rmax}, tail={self.tail!r}"
            + (", keep_one_more=True)" if self.keep_one_more else ")")
        )


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1 (a low-rank state has rank >= 1), got {value}")
