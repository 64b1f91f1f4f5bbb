"""hierot: hierarchy-aware classification with CPCC and optimal-transport class distances.

``import hierot`` loads the torch-only core: the label tree (``hierot.hierarchy``), the class
distances (``hierot.distances``), CPCC (``hierot.correlation``) and the objectives
(``hierot.objectives``), with torch and numpy and nothing else third-party. The application
(training, evaluation, data modules, models: Lightning, Hydra, timm, torchvision,
torchmetrics) is imported by the entry points, and ``load_trained`` / ``run_datamodule``
import it when first used. ``tests/test_core_imports.py`` pins the core's import set.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from hierot import objectives  # noqa: F401  (registers the objectives)
from hierot.correlation import CPCCLoss, cpcc
from hierot.distances import class_distances, list_distances, register_distance
from hierot.hierarchy import Hierarchy, HierarchyError

try:
    __version__ = version("hierot")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# public names of the application layer: imported on first use (PEP 562)
_APPLICATION = {"load_trained": "hierot.checkpoints", "run_datamodule": "hierot.checkpoints"}


def __getattr__(name: str) -> Any:
    if name in _APPLICATION:
        return getattr(import_module(_APPLICATION[name]), name)
    raise AttributeError(f"module 'hierot' has no attribute {name!r}")


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
