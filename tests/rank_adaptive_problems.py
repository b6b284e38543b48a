"""Problems for the tests of the rank-adaptive integrators (parallel, midpoint, abc-PSI).

Each problem comes with what a test needs to judge a method on it: a dense reference, a
loss, or the rank the solution should settle at. Everything is plain NumPy except
:func:`invariant_field`, which works in any array namespace.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

import lowrank_integrators as lri
from tests.problems_for_tests import dense_solution, orthonormal, skew


def invariant_field(W1, W2, xp=np):
    r"""``F(t, Y) = W1 Y + Y W2^T + diag(sin(Y 1)) Y``.

    Of the form ``A(Y) Y + Y B``, so the rank-r manifold is invariant: the exact solution
    from a rank-r start stays rank r and is the DLRA solution. ``A(Y)`` depends on ``Y 1``,
    not on ``Y Y^H``, so the field is genuinely nonlinear: projector splitting, the
    augmented BUG and abc-PSI (truncated to fixed rank) are only first order on it, unlike
    on Sylvester fields (algorithm reference, pitfalls 7.1 and 7.2).
    """
    W2T = xp.matrix_transpose(W2)

    def f(t, Y):
        ones = xp.ones((Y.shape[1], 1), dtype=Y.dtype, device=array_api_compat.device(Y))
        return W1 @ Y + Y @ W2T + xp.sin(Y @ ones) * Y

    return f


def invariant_problem(n: int = 20, r: int = 3, sigmas=(1.0, 0.5, 0.25), seed: int = 7):
    """The field of :func:`invariant_field` with a rank-r start; returns ``(f, Y0)``."""
    rng = np.random.default_rng(seed)
    W1, W2 = skew(rng, n), skew(rng, n)
    Y0 = lri.LowRankMatrix(
        orthonormal(rng, n, r), np.diag(np.asarray(sigmas, dtype=float)), orthonormal(rng, n, r)
    )
    return invariant_field(W1, W2), Y0


def lyapunov_with_source(n: int = 40, seed: int = 11, complex_: bool = False):
    """V7-like: ``Y' = A Y + Y A^T + B C^H`` from a rank-1 start, ``A = tridiag(1, -2, 1)``.

    With ``complex_`` the source is complex and non-Hermitian (a missing conjugate
    transpose in the L-product shows). Returns ``(problem, f, Y0)`` with the dense field
    ``f`` for references.
    """
    rng = np.random.default_rng(seed)
    A = np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    B = rng.standard_normal((n, 2))
    Cs = B.copy()
    x0 = rng.standard_normal((n, 1))
    if complex_:
        B = B + 1j * rng.standard_normal((n, 2))
        Cs = rng.standard_normal((n, 2)) + 1j * rng.standard_normal((n, 2))
        x0 = x0 + 1j * rng.standard_normal((n, 1))
        A = A.astype(complex)
    source = (B / np.linalg.norm(B)) @ (Cs / np.linalg.norm(Cs)).conj().T
    x0 = 0.1 * x0 / np.linalg.norm(x0)
    Y0 = lri.LowRankMatrix(x0 / 0.1, np.array([[0.01]], dtype=x0.dtype), x0.conj() / 0.1)
    problem = lri.SylvesterODE(A, A, C=source)

    def f(t, Y):
        return A @ Y + Y @ A.T + source

    return problem, f, Y0


def numerical_rank(Y: np.ndarray, tol: float) -> int:
    """Smallest rank whose discarded Frobenius tail is at most ``tol``."""
    s = np.linalg.svd(Y, compute_uv=False)
    tails = np.sqrt(np.cumsum(s[::-1] ** 2))[::-1]
    return int(np.sum(tails > tol))


def decaying_problem(n: int = 30, seed: int = 5):
    """``Y' = -D Y`` from a rank-6 start whose last four directions decay like ``e^{-20 t}``.

    Returns ``(problem, Y0, surviving_rank)``; after ``t = 1`` only two directions are
    above ``1e-8``.
    """
    rng = np.random.default_rng(seed)
    d = np.zeros(n)
    d[2:6] = 20.0
    U0 = np.eye(n)[:, :6]
    Y0 = lri.LowRankMatrix(U0, np.diag([1.0, 0.8, 0.6, 0.5, 0.4, 0.3]), orthonormal(rng, n, 6))
    return lri.SylvesterODE(-np.diag(d)), Y0, 2


class LeastSquaresFlow:
    """Gradient flow of ``L(W) = ||X W - B||_F^2 / 2``: ``F(W) = -X^T (X W - B)``.

    ``X`` has singular values in ``[0.5, 1.5]``, so the gradient is Lipschitz with constant
    ``lipschitz = 2.25`` and the flow is not a plain projection (unlike ``X = I``).
    """

    def __init__(self, m: int = 40, n: int = 30, r: int = 4, seed: int = 3) -> None:
        rng = np.random.default_rng(seed)
        Q1, Q2 = orthonormal(rng, m, m), orthonormal(rng, m, m)
        s = np.linspace(0.5, 1.5, m)
        self.X = Q1 @ np.diag(s) @ Q2.T
        self.B = rng.standard_normal((m, n))
        self.lipschitz = float(s.max() ** 2)
        self.problem = lri.SylvesterODE(-self.X.T @ self.X, None, C=self.X.T @ self.B)
        self.Y0 = lri.LowRankMatrix(
            orthonormal(rng, m, r), np.diag(rng.random(r)), orthonormal(rng, n, r)
        )

    def loss(self, Y: lri.LowRankMatrix) -> float:
        return 0.5 * float(np.linalg.norm(self.X @ Y.to_dense() - self.B) ** 2)

    def gradient_norm(self, Y: lri.LowRankMatrix) -> float:
        return float(np.linalg.norm(self.X.T @ (self.X @ Y.to_dense() - self.B)))


def least_squares_flow() -> LeastSquaresFlow:
    return LeastSquaresFlow()


def reference(f, Y0: lri.LowRankMatrix, T: float) -> np.ndarray:
    """Dense reference of the full ODE at ``T``."""
    return dense_solution(f, 0.0, T, Y0.to_dense())
