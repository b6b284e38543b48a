"""The exceptions a step raises when it cannot be completed.

:func:`~lowrank_integrators.solve` turns a :class:`StepFailure` into a solution with status
``"failed"`` that keeps the last good state and names the step and its time; the training
client turns it into :class:`~lowrank_integrators.training.TrainingDiverged`. Called
directly, ``Integrator.step`` raises it.
"""

from __future__ import annotations

__all__ = ["NonFiniteError", "RejectionLimitError", "StepFailure"]


class StepFailure(ArithmeticError):
    """A step could not be completed (non-finite numbers, endless step rejection)."""


class NonFiniteError(StepFailure, FloatingPointError):
    """An array about to be factorised (QR or SVD) holds NaN or infinity.

    LAPACK gives no usable answer for such input (an SVD of a matrix holding ``inf`` may
    not even return), so the factorisation is never started.

    Parameters
    ----------
    what : str
        What was to be factorised, e.g. ``"the core (SVD)"``.
    """

    def __init__(self, what: str) -> None:
        super().__init__(f"non-finite values in {what}")
        self.what = what


class RejectionLimitError(StepFailure):
    """A method with step rejection rejected more attempts than its bound allows."""
