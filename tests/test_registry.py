"""One registry: every consumer reads the methods and their theory from the classes."""

from __future__ import annotations

import inspect

import pytest

import lowrank_integrators as lri
from lowrank_integrators import integrators
from lowrank_integrators.integrators.base import StepMethod
from lowrank_integrators.methods import METHODS, by_name, matrix_methods, training_methods
from lowrank_integrators.training.experiment import INTEGRATORS, make_integrator
from lowrank_integrators.verify.methods import available_methods


def concrete_integrator_classes():
    return {
        cls
        for _, cls in inspect.getmembers(integrators, inspect.isclass)
        if issubclass(cls, StepMethod)
        and not inspect.isabstract(cls)
        and cls.__module__.startswith("lowrank_integrators.integrators.")
        and cls.__name__
        not in ("StepMethod", "Integrator", "AdaptiveIntegrator", "TuckerIntegrator")
    }


def test_every_integrator_of_the_package_is_registered():
    assert concrete_integrator_classes() == {m.cls for m in METHODS}


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_the_theory_of_an_entry_is_the_one_its_class_declares(method):
    built = method.build(
        lri.Euler(), lri.FixedRank(3) if method.cls.rank_adaptive is True else None
    )
    assert isinstance(built, method.cls)
    assert built.order == method.order == method.theory["order"]
    for name in ("passes_per_step", "max_rank_growth", "fixed_rank_order", "exact_tangent"):
        assert getattr(built, name) == method.theory[name], name


def test_the_suite_reads_the_registry():
    specs = available_methods()
    assert [s.name for s in specs] == [m.name for m in matrix_methods()]
    for spec in specs:
        m = by_name(spec.name)
        assert (spec.order, spec.max_growth, spec.descent, spec.norm) == (
            m.order,
            m.max_rank_growth,
            m.descent,
            m.norm,
        )


def test_the_training_command_line_reads_the_registry():
    assert INTEGRATORS == training_methods()
    for name, method in INTEGRATORS.items():
        built = make_integrator(name, tau=0.1, rank=4, rmin=2, rmax=8)
        assert isinstance(built, method.cls)
        assert built.order == method.order


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="augmented-bug"):
        by_name("no-such-method")


def test_declared_ranks_growth_and_passes_are_the_papers():
    assert by_name("AugmentedBUG").max_rank_growth == 2
    assert by_name("MidpointBUG").max_rank_growth == 4
    assert by_name("Strang").order == 2 and by_name("Strang").passes_per_step == 5
    assert by_name("ParallelBUG2").fixed_rank_order and not by_name("ParallelBUG").fixed_rank_order
