r"""V4: explicit time-dependent data ``F(t, Y) = A'(t)``.

Source: Koch, Lubich (2007); Lubich, Oseledets (2014), arXiv:1301.1058, Thm 4.1 (exactness
of projector splitting); Ceruti, Lubich (2022), arXiv:2010.02022 (exactness of BUG).
``A(t) = e^{t W1} e^t D (e^{t W2})^T`` with ``W1``, ``W2``, ``D`` of V1; ``Y0 = D_r``.
The substeps are solved exactly through increments ``A(t1) - A(t0)``.

Reference (exact): ``A(t)`` itself.

Theory: with rank-r data (``d_j = 0`` for ``j > r``) the methods reproduce ``A(t_n)`` to
round-off for every ``h``, although ``sigma_r = 2^{-r}`` is tiny. With the full ``D`` no
rank-r matrix is closer to ``A(1)`` than its truncated SVD (Eckart-Young), a lower bound every
rank-r result respects whatever the method, so it is reported, not asserted; the error stays
near it, essentially independent of ``h`` (the ``c1 eps`` regime), but the robust bounds give
no constant ``c1`` to assert an upper bound with (the plateau study is informational).
"""

from __future__ import annotations

import numpy as np

import lowrank_integrators as lri
from lowrank_integrators.verify import StudyResult, at_least, exactness_study, informational
from lowrank_integrators.verify._runs import final_error, run
from lowrank_integrators.verify.suite import Case

from ._common import fixed_rank_builder
from .sylvester_rotation import SylvesterRotation

NAME = "V4-explicit-data"
T = 1.0
STEPS_QUICK = (0.1, 0.02, 0.005)
STEPS_FULL = (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
#: Round-off allowed relative to ||A(T)|| for exact reproduction.
EXACT_RTOL = 1e-10


def data_problem(setup: SylvesterRotation, r: int | None) -> lri.DataODE:
    """``DataODE`` of ``A(t)``: factored for rank-r data (``r``), dense for the full ``D``."""
    if r is None:
        return lri.DataODE(setup.full_reference)

    def A(t: float) -> lri.LowRankMatrix:
        E1, E2 = setup.exp(0, t, r), setup.exp(1, t, r)
        return lri.LowRankMatrix(E1, np.diag(np.exp(t) * setup.d[:r]), E2, check=False)

    return lri.DataODE(A)


def _plateau(setup: SylvesterRotation, spec, r: int, steps) -> StudyResult:
    problem = data_problem(setup, None)
    Y0 = setup.initial_value(r)
    sigma = np.linalg.svd(setup.full_reference(T), compute_uv=False)
    best = float(np.linalg.norm(sigma[r:]))
    errors = [
        final_error(
            run(problem, Y0, fixed_rank_builder(spec, r), (0.0, T), h), setup.full_reference
        )
        for h in steps
    ]
    return StudyResult(
        study="plateau",
        problem=NAME,
        method=spec.name,
        checks=[
            at_least(
                "min error",
                min(errors),
                best,
                1e-12 * best,
                required=False,
                note="Eckart-Young lower bound (informational: holds for any rank-r result; "
                "theory gives no upper bound with known constants here)",
            ),
            informational(
                "max error / best rank-r error",
                max(errors) / best,
                "c1 eps regime: about 1, independent of h",
            ),
        ],
        summary={"error": errors[-1], "final_rank": r},
        series={"h": np.asarray(steps), "error": errors, "best": best},
    )


def cases(methods, quick: bool) -> list[Case]:
    setup = SylvesterRotation()
    steps = STEPS_QUICK if quick else STEPS_FULL
    out: list[Case] = []
    for spec in methods:
        if not spec.exact_data:
            continue
        for r in (4, 16) if quick else (4, 8, 16):

            def exact(spec=spec, r=r) -> StudyResult:
                problem = data_problem(setup, r)
                scale = float(np.linalg.norm(setup.dlra_reference(r)(T)))
                return exactness_study(
                    problem,
                    setup.initial_value(r),
                    fixed_rank_builder(spec, r),
                    setup.dlra_reference(r),
                    (0.0, T),
                    steps,
                    tolerance=EXACT_RTOL * scale,
                    problem_name=NAME,
                    note=f"rank-{r} data reproduced to round-off",
                )

            out.append(Case(NAME, spec.name, f"exactness-r{r}", exact))
        out.append(
            Case(NAME, spec.name, "plateau", lambda spec=spec: _plateau(setup, spec, 8, steps))
        )
    return out
