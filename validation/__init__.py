"""Reference problems of the validation suite, each with an exact or independent reference.

Installed as :mod:`lowrank_integrators.validation`. Every module cites its source, builds its
problem from seeded random data (``numpy.random.default_rng``) and exposes
``cases(methods, quick) -> list[Case]`` for :mod:`lowrank_integrators.verify.suite`.
"""

#: Problem modules in the order the suite runs them.
MODULES = (
    "sylvester_rotation",
    "explicit_data",
    "schrodinger",
    "stiff_heat",
    "lyapunov_source",
    "gradient_flow",
    "nonlinear_field",
    "nonlinear_tangent",
    "tucker_rotation",
)
