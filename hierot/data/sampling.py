"""The training order: one shuffled order per epoch, split into global batches that the ranks
share, and a position that a checkpoint records (through the data module's ``state_dict``),
so that a resumed run reads the rest of the epoch it stopped in, in the same order, with the
same random state.

On one process the order is exactly ``DataLoader(shuffle=True)``'s: each epoch's permutation
comes from a seed drawn from torch's global generator when the epoch starts. Under DDP rank 0's
seed is broadcast, so every rank cuts its part of the same global batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler

Progress = Callable[[], tuple[int, bool]]


def rng_states() -> dict[str, Any]:
    """The global random states a training step draws from: torch (CPU, every CUDA device),
    numpy, Python; as tensors and plain values, which ``torch.load(weights_only=True)``
    reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002 (the global state is what is saved)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def draw_seed() -> int:
    """A seed from torch's global generator, drawn as ``RandomSampler`` and a DataLoader
    iterator draw theirs (one int64 each)."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


class ResumableSampler(DistributedSampler):
    """This rank's indices of an epoch of global batches.

    Each epoch is one permutation of ``n`` samples cut into global batches of
    ``batch_size``; rank ``r`` of ``world`` takes the ``r``-th of the ``world`` equal parts of
    every global batch, so the ranks together read what one process reads. ``drop_last`` drops
    a last partial global batch; a kept one is split as evenly as possible.

    It subclasses ``DistributedSampler`` only so that Lightning neither wraps nor replaces it
    under DDP; it has its own ``__init__``.

    Args:
        n: samples in the dataset.
        batch_size: the global batch (a multiple of ``world``).
        rank, world: this process's rank and the number of processes.
        drop_last: drop the last global batch when it is partial.
        progress: ``() -> (batches processed in the current epoch, epoch done)``, read when a
            checkpoint is saved (the loop's count, which prefetching does not move).
        share_seed: makes rank 0's epoch seed every rank's (a broadcast); None on one process.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        drop_last: bool = True,
        progress: Progress | None = None,
        share_seed: Callable[[int], int] | None = None,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} is not a multiple of {world} ranks")
        self.n = n
        self.batch_size = batch_size
        self.rank = rank
        self.num_replicas = world
        self.drop_last = drop_last
        self.shuffle = True
        self.epoch = 0
        self.progress = progress
        self.share_seed = share_seed
        self._seed: int | None = None  # the current epoch's
        self._resume: dict[str, Any] | None = None

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.num_replicas

    def _local_sizes(self) -> list[int]:
        """This rank's batch sizes in an epoch (every rank has as many batches)."""
        full, rest = divmod(self.n, self.batch_size)
        sizes = [self.local_batch] * full
        if rest and not self.drop_last:
            sizes.append(max(1, -(-rest // self.num_replicas)))
        return sizes

    def __len__(self) -> int:
        return sum(self._local_sizes())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, seed: int) -> torch.Tensor:
        """This rank's indices for the epoch of ``seed``."""
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        full = self.n // self.batch_size * self.batch_size
        b = self.local_batch
        parts = [perm[:full].view(-1, self.num_replicas, b)[:, self.rank].reshape(-1)]
        if full < self.n and not self.drop_last:
            tail = perm[full:]
            size = max(1, -(-tail.numel() // self.num_replicas))
            # every rank gets the same number of batches: pad the tail by wrapping around
            tail = torch.cat([tail, perm[: size * self.num_replicas - tail.numel()]])
            parts.append(tail.view(self.num_replicas, size)[self.rank])
        return torch.cat(parts)

    def __iter__(self) -> Iterator[int]:
        # A generator: the body runs when the first index is taken, i.e. when the epoch's
        # first batch is fetched, after everything that ran before it in a fresh run.
        resume, self._resume = self._resume, None
        skip = 0
        if resume is not None:
            set_rng_states(resume["rng"])
        if resume is not None and resume["epoch"] == self.epoch:
            seed, skip = resume["seed"], resume["batches"] * self.local_batch
        else:
            if resume is not None and resume["draws_per_epoch"]:
                draw_seed()  # the DataLoader iterator that a fresh run created since the save
            seed = draw_seed()
            if self.share_seed is not None:
                seed = self.share_seed(seed)
        self._seed = seed
        yield from self._order(seed)[skip:].tolist()

    def state_dict(self) -> dict[str, Any]:
        batches, done = self.progress() if self.progress is not None else (0, False)
        return {
            "epoch": self.epoch,
            "seed": self._seed,
            "batches": batches,
            "done": done,
            "rng": rng_states(),
        }

    def load_state_dict(self, state: dict[str, Any], draws_per_epoch: int = 1) -> None:
        """Resume from ``state``: the epoch it was saved in when it was not done, else the
        next. ``draws_per_epoch``: global draws a fresh run makes between an epoch's end and
        the next epoch's seed (1: the DataLoader iterator's base seed, made anew each epoch
        without persistent workers)."""
        self._resume = {**state, "draws_per_epoch": draws_per_epoch}
        if state["done"] or state["seed"] is None:
            self.epoch = state["epoch"] + 1
            self._resume["epoch"] = -1  # no saved order for that epoch: draw its seed
        else:
            self.epoch = state["epoch"]
