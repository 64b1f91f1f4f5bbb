"""Counting host synchronisations: the places where Python waits for a tensor's value.

On a GPU the host queues kernels ahead of the device; reading a value (``item``, ``float``,
``bool``, ``tolist``, ``cpu``) or running an op whose output size depends on the data (``unique``,
``nonzero``, boolean indexing, ``repeat_interleave`` without ``output_size``) drains that
queue and leaves the device idle. On CUDA ``torch.cuda.set_sync_debug_mode("error")`` finds
them; on a CPU nothing ever waits, so ``SyncCounter`` counts the operations that would wait
on a GPU, which lets a CPU test hold a training step to its number.

>>> import torch
>>> with SyncCounter() as syncs:
...     x = torch.arange(6.0)
...     _ = float(x.sum())             # one read
...     _ = torch.unique(x % 2)        # one data-dependent size
...     _ = x.repeat_interleave(2)     # a repeat count known ahead: no wait
>>> syncs.total, sorted(syncs.counts)
(2, ['_local_scalar_dense', '_unique2'])
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten operators whose CUDA kernels return to the host before the next one can be queued:
# a value read, or an output whose size only the data tells.
SYNCING_OPS = frozenset(
    {
        "_local_scalar_dense",  # item, float, int, bool, and Python comparisons of tensors
        "nonzero",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "bincount",
        "histc",
        "multinomial",
    }
)
# Indexing whose indices may be masks (``x[mask]``, ``x[mask] = v``): a mask is turned into
# the positions it selects, whose number only the data tells.
BOOL_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})

# Tensor methods that copy to the host, which on a CPU tensor run no aten operator a
# dispatch mode sees. hierot writes its copies to the host as ``.cpu()`` (then
# ``.numpy()`` for host arithmetic, which a dispatch mode does not see), never as
# ``.to("cpu")``, so that each is counted once.
HOST_METHODS = {torch.Tensor.tolist: "tolist", torch.Tensor.cpu: "cpu"}


def _op_name(func: Any) -> str:
    return func._schema.name.split("::", 1)[-1]


class _Ops(TorchDispatchMode):
    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__()
        self._count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = _op_name(func)
        if name in SYNCING_OPS:
            self._count(name)
        elif (
            name == "repeat_interleave"
            and func._overloadname == "Tensor"  # the size is the repeats' sum
            and (kwargs or {}).get("output_size") is None
        ):
            self._count(name)
        elif name in BOOL_INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self._count("boolean index")  # the selected rows are counted first
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, count: Callable[[str], None]) -> None:
        super().__init__()
        self._count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = HOST_METHODS.get(func)
        if name is not None:
            self._count(name)
        elif name in BOOL_INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]
        ):
            self._count("boolean index")  # the selected rows are counted first
        return func(*args, **(kwargs or {}))


class SyncCounter:
    """A context manager that counts, by operator, what would make the host wait for a GPU
    in the code it runs (in this thread, and in autograd's backward).

    ``counts`` maps an operator (``_local_scalar_dense`` for a value read, ``_unique2``,
    ``nonzero``, ``repeat_interleave``, ``tolist``, ...) to its count; ``total`` sums them.
    ``pause()`` stops counting for a while (``with syncs.pause(): ...``), for work that is
    not the code under test.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._paused = 0
        self._modes: tuple[_Ops, _Methods] | None = None

    def _count(self, name: str) -> None:
        if not self._paused:
            self.counts[name] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> SyncCounter:
        self._modes = (_Ops(self._count), _Methods(self._count))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._modes is not None
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._modes = None

    def pause(self) -> _Pause:
        return _Pause(self)


class _Pause:
    def __init__(self, counter: SyncCounter) -> None:
        self._counter = counter

    def __enter__(self) -> None:
        self._counter._paused += 1

    def __exit__(self, *exc: object) -> None:
        self._counter._paused -= 1
