"""Every component of the application, for the entry points: importing this module registers
each component's distances, objectives and config checks (``hierot.checks``).

The core (``import hierot``) does not import it, so that CPCC in a plain PyTorch loop loads
neither Lightning nor Hydra; ``hierot.checks.run_checks`` imports it before it runs.
"""

from hierot import (  # noqa: F401
    correlation,
    data,
    distances,
    metrics,
    models,
    objectives,
    resume,
    speed,
    stopping,
)
from hierot.metrics import epoch, features, node_eval  # noqa: F401
