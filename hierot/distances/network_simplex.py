"""Exact OT plans from POT's C++ network simplex, in one place.

``ot.emd`` checks and converts its inputs on every call, ~10x the solver's own time on the
small problems of a class pair; hierot calls the compiled solver behind it,
``ot.lp.emd_wrap.emd_c``, directly. That is POT's private API: its signature has grown before
(``alpha_init``, ``beta_init`` in 0.9.6), so it is used only when its leading parameters are
the ones this module passes, and ``ot.emd`` otherwise. ``direct_solver()`` says which; a
test fails if the pinned POT no longer offers the direct route. ``ot.emd`` also warns when the
solver's result code is not ``OPTIMAL``; ``exact_plan`` returns the code with the plan, and
``hierot.distances.emd`` warns and counts (``UNFINISHED_PLANS``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

# The leading parameters of emd_c this module passes, by name.
EXPECTED_PARAMETERS = ("a", "b", "M", "max_iter", "numThreads")

# POT's result codes (ot.lp.emd_wrap): only OPTIMAL gives the optimal plan.
INFEASIBLE, OPTIMAL, UNBOUNDED, MAX_ITER_REACHED = 0, 1, 2, 3


def _find_emd_c() -> Callable[..., tuple] | None:
    try:
        from ot.lp.emd_wrap import emd_c
    except ImportError:
        return None
    try:
        params = tuple(inspect.signature(emd_c).parameters)
    except (TypeError, ValueError):
        return None
    return emd_c if params[: len(EXPECTED_PARAMETERS)] == EXPECTED_PARAMETERS else None


# POT is imported when the first plan is solved, not with the distances (the core's import
# set has no POT): _EMD_C is _UNSET until then, and None where ``ot.emd`` is the route.
_UNSET = object()
_EMD_C: object = _UNSET


def _solver() -> Callable[..., tuple] | None:
    global _EMD_C
    if _EMD_C is _UNSET:
        _EMD_C = _find_emd_c()
    return _EMD_C  # type: ignore[return-value]


def direct_solver() -> bool:
    """Whether plans come from ``emd_c`` directly (else through ``ot.emd``)."""
    return _solver() is not None


def exact_plan(
    a: np.ndarray, b: np.ndarray, cost: np.ndarray, max_iter: int
) -> tuple[np.ndarray, int]:
    """``(plan, code)``: the plan (n, m) between float64 weights ``a`` (n,) and ``b`` (m,)
    of equal total mass under the C-contiguous float64 ``cost`` (n, m), and POT's result
    code. The plan is optimal only where ``code == OPTIMAL``; one stopped at ``max_iter``
    (``MAX_ITER_REACHED``) need not even carry the whole mass. ``ot.emd`` warns on such a
    code; ``emd_c`` leaves it to the caller."""
    emd_c = _solver()
    if emd_c is not None:
        # (G, cost, alpha, beta, result_code): the code is last
        out = emd_c(a, b, cost, max_iter=max_iter, numThreads=1)
        return out[0], int(out[-1])
    import ot

    plan, info = ot.emd(a, b, cost, numItermax=max_iter, log=True)
    return plan, int(info["result_code"])
