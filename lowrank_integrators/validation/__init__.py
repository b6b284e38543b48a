"""Reference problems of the validation suite, each with an exact or independent reference.

Every module cites its source, builds its
problem from seeded random data (``numpy.random.default_rng``) and exposes
``cases(methods, quick) -> list[Case]`` for ``lowrank_integrators.verify.suite``.
"""

from . import (
    explicit_data,
    gradient_flow,
    lyapunov_source,
    nonlinear_field,
    nonlinear_tangent,
    schrodinger,
    stiff_heat,
    sylvester_rotation,
    tucker_rotation,
)

#: Problem modules in the order the suite runs them.
PROBLEM_MODULES = (
    sylvester_rotation,
    explicit_data,
    schrodinger,
    stiff_heat,
    lyapunov_source,
    gradient_flow,
    nonlinear_field,
    nonlinear_tangent,
    tucker_rotation,
)

#: Their short names (the module names without the package).
MODULES = tuple(m.__name__.rsplit(".", 1)[1] for m in PROBLEM_MODULES)
