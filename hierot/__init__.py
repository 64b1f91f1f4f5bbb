"""hierot: hierarchy-aware classification with CPCC and optimal-transport class distances."""

# Importing the components registers them: their distances, objectives and config checks
# (``hierot.checks``), which the config check runs without importing any component.
from hierot import data, metrics, models, objectives, resume, speed, stopping  # noqa: F401
from hierot.checkpoints import load_trained, run_datamodule
from hierot.cpcc import CPCCLoss, cpcc
from hierot.distances import class_distances, list_distances, register_distance
from hierot.hierarchy import Hierarchy, HierarchyError

__all__ = [
    "CPCCLoss",
    "Hierarchy",
    "HierarchyError",
    "class_distances",
    "cpcc",
    "list_distances",
    "load_trained",
    "register_distance",
    "run_datamodule",
]
__version__ = "0.1.0"
