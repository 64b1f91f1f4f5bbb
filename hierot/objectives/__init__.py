"""Training objectives: the base loss of a run (``objective=<name>``), with CPCC added on top
of any of them. Add one with ``@register_objective("name")`` on an ``Objective``."""

# Importing the objective modules registers them.
from hierot.objectives import (  # noqa: F401
    ce,
    curriculum,
    embedding,
    flamingo,
    haf,
    haframe,
    hiercos,
    hxe,
    marginal,
    mtl,
    quadruplet,
    soft_labels,
    supcon,
    yolo,
)
from hierot.objectives.registry import (
    Objective,
    build_objective,
    check_objective,
    check_objective_config,
    get_objective,
    list_objectives,
    objective_options,
    register_objective,
)

DEFAULT_OBJECTIVE = "ce"

__all__ = [
    "DEFAULT_OBJECTIVE",
    "Objective",
    "build_objective",
    "check_objective",
    "check_objective_config",
    "get_objective",
    "list_objectives",
    "objective_options",
    "register_objective",
]
