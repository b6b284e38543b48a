r"""The NumPy reference network: a multilayer perceptron with low-rank layers.

Layers compute ``z = a W^T + b`` (``W`` of shape ``(n_out, n_in)``), with ReLU between layers and
softmax cross-entropy (mean over the batch) at the end; backpropagation is written by hand.
Three kinds of layers share the code, so that the baselines are trained by the same program:

* ``"lowrank"``: ``W = U S V^T`` held as a :class:`~lowrank_integrators.LowRankMatrix` and moved
  by a matrix integrator (dynamical low-rank training, Schotthöfer et al., NeurIPS 2022,
  arXiv:2205.13571). The forward pass is ``((a V) S^T) U^T`` and the pass returns the products
  ``grad(W) V = G^T (a V)``, ``grad(W)^T U = a^T (G U)`` and ``U^T grad(W) V = (G U)^T (a V)``
  with ``G = dL/dz``: ``W`` and its gradient are never formed.
* ``"dense"``: ``W`` is a plain parameter (the dense baseline, or the dense last layer).
* ``"factorized"``: the vanilla factorisation ``W = U V^T`` with ``U`` and ``V`` plain
  parameters trained by the optimizer (the baseline of the "initialization test" of the seed).

Parameters other than the low-rank weights (dense weights, factors of ``"factorized"`` layers,
all biases) form one flat list, layer by layer: ``[W, b]``, ``[U, V, b]`` or ``[b]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _fused
from ..factors import LowRankMatrix
from ..integrators.augmentation import leading_signs

__all__ = ["MLP", "Layer", "NetworkPass"]

_KINDS = ("lowrank", "dense", "factorized")


@dataclass(frozen=True)
class Layer:
    """One affine layer ``z = a W^T + b``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output widths.
    kind : {"lowrank", "dense", "factorized"}
        How ``W`` is represented and trained.
    rank : int, optional
        Initial rank (``"lowrank"``) or fixed rank (``"factorized"``); ignored for ``"dense"``.
    """

    n_in: int
    n_out: int
    kind: str = "lowrank"
    rank: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_in", "n_out"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        if self.kind != "dense":
            r = self.rank
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
                raise ValueError(f"a {self.kind!r} layer needs an int rank, got {r!r}")
            if not 1 <= r <= min(self.n_in, self.n_out):
                raise ValueError(
                    f"rank must satisfy 1 <= rank <= min(n_in, n_out) = "
                    f"{min(self.n_in, self.n_out)}, got {r}"
                )


def parse_arch(arch: str | Sequence[int]) -> list[int]:
    """``"64-256-256-10"`` (or a sequence) -> the list of widths."""
    if isinstance(arch, str):
        try:
            widths = [int(w) for w in arch.split("-")]
        except ValueError:
            raise ValueError(
                f"arch must be widths joined by '-', such as '64-256-256-10', got {arch!r}"
            ) from None
    else:
        widths = [int(w) for w in arch]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"arch needs at least two positive widths, got {arch!r}")
    return widths


class NetworkPass:
    """The result of one forward/backward pass of an :class:`MLP` (a ``GradientPass``).

    Holds, for every low-rank layer, its input activations ``X`` and output gradients ``G``;
    the gradient products are formed from them on request, each a new array that the caller
    owns (``fresh_products``: the optimizer may negate it in place).
    """

    fresh_products = True

    def __init__(
        self,
        loss: float,
        param_grads: list[np.ndarray],
        acts: list[tuple[np.ndarray, np.ndarray]],
        formed: list[dict[str, Any]] | None = None,
    ) -> None:
        self.loss = loss
        self.param_grads = param_grads
        self._acts = acts
        # Products the pass formed anyway, by layer: X V and G U at the layer's own bases
        # (the forward pass computes X V, the backward pass G U). A request in those very
        # bases (the K- and L-steps of DLRT start there) reuses them.
        self._formed = formed if formed is not None else [{} for _ in acts]

    def _XV(self, layer: int, V: np.ndarray) -> np.ndarray:
        return self._reuse(layer, "V", "XV", self._acts[layer][0], V)

    def _GU(self, layer: int, U: np.ndarray) -> np.ndarray:
        return self._reuse(layer, "U", "GU", self._acts[layer][1], U)

    def _reuse(self, layer: int, basis: str, product: str, A: np.ndarray, W: np.ndarray) -> Any:
        """``A @ W``, reusing ``A @ W0`` for the layer's own basis ``W0``.

        ``W`` may be ``W0`` itself or a basis whose leading block is ``W0`` up to the signs of
        its columns (the augmented bases of the rank-adaptive steps): then only the new columns
        are formed.
        """
        got = self._formed[layer]
        W0 = got.get(basis)
        if W0 is W:
            return got[product]
        if W0 is not None and W.shape[1] > W0.shape[1]:
            signs = leading_signs(W, W0)
            if signs is not None:
                return _beside(got[product], signs, A, W[:, W0.shape[1] :])
        return A @ W

    def right(self, layer: int, V: np.ndarray) -> np.ndarray:
        G = self._acts[layer][1]
        return G.T @ self._XV(layer, V)

    def left(self, layer: int, U: np.ndarray) -> np.ndarray:
        X = self._acts[layer][0]
        return X.T @ self._GU(layer, U)

    def project(self, layer: int, U: np.ndarray, V: np.ndarray) -> np.ndarray:
        return self._GU(layer, U).T @ self._XV(layer, V)

    def dense_gradient(self, layer: int) -> np.ndarray:
        """``grad(W)`` of a low-rank layer as a dense matrix (tests and diagnostics only)."""
        X, G = self._acts[layer]
        return G.T @ X


class MLP:
    """A multilayer perceptron with ReLU activations and softmax cross-entropy loss.

    Parameters
    ----------
    layers : sequence of Layer
        Consecutive layers (``layers[i].n_out == layers[i + 1].n_in``).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_integrators import AugmentedBUG, Euler, Tolerance
    >>> from lowrank_integrators.training import MLP, LowRankTraining
    >>> net = MLP.from_arch("8-16-3", rank=4, last_dense=True)
    >>> weights, params = net.init(np.random.default_rng(0))
    >>> method = AugmentedBUG(Tolerance(0.1, relative=True, rmin=2), substep=Euler())
    >>> trainer = LowRankTraining(method, net.gradient)
    >>> state = trainer.init(weights, params)
    >>> rng = np.random.default_rng(1)
    >>> batch = (rng.standard_normal((32, 8)), rng.integers(0, 3, 32))
    >>> state, report = trainer.step(state, batch, lr=0.1)
    >>> report.n_passes, len(state.ranks)
    (1, 1)
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("layers must not be empty")
        for i, lay in enumerate(layers):
            if not isinstance(lay, Layer):
                raise TypeError(f"layers[{i}] must be a Layer, got {type(lay).__name__}")
        for i in range(len(layers) - 1):
            if layers[i].n_out != layers[i + 1].n_in:
                raise ValueError(
                    f"layers[{i}].n_out = {layers[i].n_out} differs from layers[{i + 1}].n_in = "
                    f"{layers[i + 1].n_in}"
                )
        self.layers = layers
        # where each layer's weight and bias live in (weights, params)
        self._index: list[dict[str, int]] = []
        n_low, n_par = 0, 0
        for lay in layers:
            idx: dict[str, int] = {}
            if lay.kind == "lowrank":
                idx["W"] = n_low
                n_low += 1
            elif lay.kind == "dense":
                idx["W"] = n_par
                n_par += 1
            else:
                idx["U"], idx["V"] = n_par, n_par + 1
                n_par += 2
            idx["b"] = n_par
            n_par += 1
            self._index.append(idx)
        self.n_lowrank = n_low
        self.n_params = n_par

    @classmethod
    def from_arch(
        cls,
        arch: str | Sequence[int],
        kind: str = "lowrank",
        rank: int | None = 20,
        last_dense: bool = True,
    ) -> MLP:
        """Build from widths such as ``"784-500-500-10"``.

        Parameters
        ----------
        kind : {"lowrank", "dense", "factorized"}
            Kind of the hidden layers (and of the last one unless ``last_dense``).
        rank : int
            Rank of the non-dense layers, clipped to ``min(n_in, n_out)``.
        last_dense : bool
            Make the last (classification) layer dense, as in the seed's experiments.
        """
        widths = parse_arch(arch)
        layers = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            k = "dense" if (last_dense and i == len(widths) - 2) else kind
            if k == "dense":
                layers.append(Layer(a, b, "dense"))
            else:
                if rank is None:
                    raise ValueError(f"kind={kind!r} needs a rank")
                layers.append(Layer(a, b, k, min(int(rank), a, b)))
        return cls(layers)

    # --- parameters ------------------------------------------------------------------------
    def init(
        self,
        rng: np.random.Generator,
        dtype: Any = np.float64,
        singular_values: str | float | None = None,
    ) -> tuple[list[LowRankMatrix], list[np.ndarray]]:
        """Initial weights and parameters.

        Dense weights are uniform in ``[-sqrt(6/n_in), sqrt(6/n_in)]`` (He initialisation for
        ReLU networks, He et al. 2015, arXiv:1502.01852; biases zero). A low-rank
        layer starts from the best rank-r approximation of such a draw; a factorized layer
        ``U V^T`` from the same matrix with ``U = P sqrt(Sigma)``, ``V = Q sqrt(Sigma)``.

        Parameters
        ----------
        rng : numpy.random.Generator
        dtype : float32 or float64
        singular_values : float, optional
            Replace the singular values of the non-dense layers' draws by
            ``sigma_k = sigma_1 base^{1-k}``, ``k = 1..r``, keeping the largest one and the
            singular vectors (decaying like ``base^{-k}``; ``2`` and ``10`` are the decays of
            the seed's initialization test).
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        base = None
        if singular_values is not None:
            base = float(singular_values)
            if not base > 1.0:
                raise ValueError(f"singular_values (the decay base) must be > 1, got {base}")
        weights: list[LowRankMatrix] = []
        params: list[np.ndarray] = []
        for lay in self.layers:
            m, n = lay.n_out, lay.n_in
            bound = np.sqrt(6.0 / n)
            if lay.kind == "dense":
                params.append(rng.uniform(-bound, bound, (m, n)).astype(dtype))
            else:
                r = int(lay.rank)
                P, sig, Qh = np.linalg.svd(rng.uniform(-bound, bound, (m, n)), full_matrices=False)
                P, sig, Q = P[:, :r], sig[:r], Qh[:r].T
                if base is not None:
                    sig = sig[0] * base ** -np.arange(0.0, r)
                if lay.kind == "lowrank":
                    weights.append(
                        LowRankMatrix(
                            P.astype(dtype),
                            np.diag(sig).astype(dtype),
                            Q.astype(dtype),
                            check=False,
                        )
                    )
                else:
                    root = np.sqrt(sig)
                    params.append((P * root).astype(dtype))
                    params.append((Q * root).astype(dtype))
            params.append(np.zeros(m, dtype=dtype))
        return weights, params

    def parameter_counts(self, ranks: Sequence[int] | None = None) -> dict[str, int]:
        """Numbers of stored parameters.

        ``dense``: the same network with every layer dense. ``evaluation``: what inference
        needs (``r (m + n)`` per low-rank layer, storing ``K = U S`` and ``V``). ``training``:
        what one step of the augmented integrators holds (``2r (m + n) + 4 r^2`` per low-rank
        layer: the augmented bases and core). Biases count everywhere.
        """
        ranks = (
            list(ranks)
            if ranks is not None
            else [int(lay.rank) for lay in self.layers if lay.kind == "lowrank"]
        )
        if len(ranks) != self.n_lowrank:
            raise ValueError(f"ranks must have {self.n_lowrank} entries, got {len(ranks)}")
        dense = ev = tr = 0
        it = iter(ranks)
        for lay in self.layers:
            m, n = lay.n_out, lay.n_in
            dense += m * n + m
            if lay.kind == "dense":
                ev += m * n + m
                tr += m * n + m
            elif lay.kind == "factorized":
                c = int(lay.rank) * (m + n) + m
                ev += c
                tr += c
            else:
                r = int(next(it))
                ev += r * (m + n) + m
                tr += 2 * r * (m + n) + 4 * r * r + m
        return {"dense": dense, "evaluation": ev, "training": tr}

    # --- forward and backward ----------------------------------------------------------------
    def forward(
        self, weights: Sequence[LowRankMatrix], params: Sequence[np.ndarray], X: np.ndarray
    ) -> np.ndarray:
        """The logits."""
        a = np.asarray(X).astype(self._dtype(weights, params), copy=False)
        last = len(self.layers) - 1
        for li, lay in enumerate(self.layers):
            a = self._affine(li, lay, weights, params, a, relu=li < last)
        return a

    def _affine(
        self,
        li: int,
        lay: Layer,
        weights: Any,
        params: Any,
        a: np.ndarray,
        formed: list[dict[str, Any]] | None = None,
        *,
        relu: bool,
    ) -> np.ndarray:
        """``a W^T + b`` of layer ``li``, passed through the ReLU where ``relu``."""
        idx = self._index[li]
        if lay.kind == "lowrank":
            U, S, V = weights[idx["W"]]
            aV = a @ V
            if formed is not None:
                formed[idx["W"]].update(V=V, XV=aV)
            z = (aV @ S.T) @ U.T
        elif lay.kind == "dense":
            z = a @ params[idx["W"]].T
        else:
            z = (a @ params[idx["V"]]) @ params[idx["U"]].T
        # z is the product's own array
        if not (relu and _fused.bias_relu(z, params[idx["b"]])):  # one pass where compiled
            z += params[idx["b"]]
            if relu:
                np.maximum(z, 0, out=z)
        return z

    def gradient(
        self, weights: Sequence[LowRankMatrix], params: Sequence[np.ndarray], batch: Any
    ) -> NetworkPass:
        """One forward/backward pass on ``batch = (X, y)`` (the ``gradient`` of the client)."""
        X, y = _check_batch(batch)
        self._check_point(weights, params)
        X = X.astype(self._dtype(weights, params), copy=False)
        acts: list[np.ndarray] = []
        formed: list[dict[str, Any]] = [{} for _ in range(self.n_lowrank)]
        a = X
        last = len(self.layers) - 1
        for li, lay in enumerate(self.layers):
            acts.append(a)
            a = self._affine(li, lay, weights, params, a, formed, relu=li < last)
        loss, G = _cross_entropy(a, y)
        grads: list[Any] = [None] * self.n_params
        lowrank_acts: list[Any] = [None] * self.n_lowrank
        for li in range(len(self.layers) - 1, -1, -1):
            lay, idx, a_in = self.layers[li], self._index[li], acts[li]
            grads[idx["b"]] = _bias_gradient(G)
            if lay.kind == "lowrank":
                U, S, V = weights[idx["W"]]
                lowrank_acts[idx["W"]] = (a_in, G)
                GU = G @ U
                formed[idx["W"]].update(U=U, GU=GU)
                da = (GU @ S) @ V.T if li > 0 else None
            elif lay.kind == "dense":
                W = params[idx["W"]]
                grads[idx["W"]] = G.T @ a_in
                da = G @ W if li > 0 else None
            else:
                U, V = params[idx["U"]], params[idx["V"]]
                GU = G @ U
                grads[idx["U"]] = G.T @ (a_in @ V)
                grads[idx["V"]] = a_in.T @ GU
                da = GU @ V.T if li > 0 else None
            if da is not None:  # da is the product's own array
                if not _fused.relu_gradient(da, a_in):
                    np.multiply(da, a_in > 0, out=da)
                G = da
        return NetworkPass(loss, grads, lowrank_acts, formed)

    def loss_and_accuracy(
        self,
        weights: Sequence[LowRankMatrix],
        params: Sequence[np.ndarray],
        X: np.ndarray,
        y: np.ndarray,
        batch_size: int = 2048,
    ) -> tuple[float, float]:
        """Mean loss and accuracy over a data set, in batches."""
        X, y = _check_batch((X, y))
        total, correct = 0.0, 0
        for s in range(0, X.shape[0], batch_size):
            logits = self.forward(weights, params, X[s : s + batch_size])
            yb = y[s : s + batch_size]
            loss, _ = _cross_entropy(logits, yb)
            total += loss * yb.shape[0]
            correct += int(np.sum(np.argmax(logits, axis=1) == yb))
        return total / X.shape[0], correct / X.shape[0]

    def _dtype(self, weights: Sequence[LowRankMatrix], params: Sequence[np.ndarray]) -> Any:
        return params[0].dtype if len(params) else weights[0].dtype

    def _check_point(self, weights: Sequence[LowRankMatrix], params: Sequence[np.ndarray]) -> None:
        if len(weights) != self.n_lowrank:
            raise ValueError(f"expected {self.n_lowrank} low-rank weights, got {len(weights)}")
        if len(params) != self.n_params:
            raise ValueError(f"expected {self.n_params} parameters, got {len(params)}")


def _beside(formed: np.ndarray, signs: np.ndarray, A: np.ndarray, new: np.ndarray) -> np.ndarray:
    """``[formed * signs, A @ new]``: the products written into the result's two blocks."""
    r = formed.shape[1]
    dtype = formed.dtype
    if not (A.dtype == dtype and new.dtype == dtype):
        dtype = np.result_type(formed, A, new)
    out = np.empty((A.shape[0], r + new.shape[1]), dtype=dtype)
    np.multiply(formed, signs, out=out[:, :r])
    np.matmul(A, new, out=out[:, r:])
    return out


def _check_batch(batch: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        X, y = batch
    except (TypeError, ValueError):
        raise TypeError("batch must be a pair (X, y) of inputs and integer labels") from None
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"batch must be X of shape (B, n_in) and y of shape (B,), got {X.shape} and {y.shape}"
        )
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels y must be integers, got {y.dtype}")
    return X, y


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Labels must index the logits: ``0 <= y < logits.shape[1]`` (a label -1 would otherwise
    be scored as the last class).
    """
    B, n_classes = logits.shape
    if y.size and (int(np.minimum.reduce(y)) < 0 or int(np.maximum.reduce(y)) >= n_classes):
        raise ValueError(
            f"labels y must be class indices in [0, {n_classes}) for a network with "
            f"{n_classes} outputs, got labels from {int(y.min())} to {int(y.max())}"
        )
    if not B:
        return math.nan, np.empty_like(logits)
    # Computed with the classes along the rows (a copy of ``logits.T``): NumPy reduces along
    # rows of ten classes with one short loop per row, and a batch of 256 took several times
    # as long for the maxima and the sums. The gradient is the transpose of that copy.
    zt = np.array(logits.T, order="C")
    zt -= np.maximum.reduce(zt, axis=0)
    zt -= np.log(np.add.reduce(np.exp(zt), axis=0))  # log-probabilities
    # Flat indices of the labels' entries: one ``take`` and one ``put``, where indexing by a
    # pair of index arrays forms the indices itself on every call.
    idx = np.multiply(y, B, dtype=np.intp)
    idx += _constant("rows", B, np.intp)
    flat = zt.reshape(-1)
    loss = float(-(np.add.reduce(flat.take(idx), axis=None) / B))
    np.exp(zt, out=zt)
    hit = flat.take(idx)
    hit -= 1.0
    flat.put(idx, hit)
    zt /= B
    return loss, zt.T


#: Read-only constant vectors (``arange(B)``, ones) by what they are, length and dtype.
_CONSTANTS: dict[tuple[str, int, str], np.ndarray] = {}


def _constant(kind: str, n: int, dtype: Any) -> np.ndarray:
    """``arange(n)`` (``kind="rows"``) or ``ones(n)`` (``kind="ones"``), made once, read-only."""
    key = (kind, n, np.dtype(dtype).char)
    vec = _CONSTANTS.get(key)
    if vec is None:
        if len(_CONSTANTS) >= 32:  # a few batch sizes in a run (the last batch is shorter)
            _CONSTANTS.clear()
        vec = np.arange(n, dtype=dtype) if kind == "rows" else np.ones(n, dtype=dtype)
        vec.flags.writeable = False
        _CONSTANTS[key] = vec
    return vec


def _bias_gradient(G: np.ndarray) -> np.ndarray:
    """``G.sum(axis=0)``, the gradient of a layer's bias, as the product ``1^T G``.

    A matrix-vector product: NumPy's reduction over the rows of a C-ordered ``G`` took 3 to 6
    times as long (batch 256, widths 10 to 2048, one thread). The sum is the same up to the
    order of its terms.
    """
    if G.dtype.char not in "fd":
        return np.add.reduce(G, axis=0)
    return _constant("ones", int(G.shape[0]), G.dtype) @ G
