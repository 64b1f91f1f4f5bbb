"""What the host waits for in a training step: counted by ``hierot.syncs.SyncCounter`` (on
CUDA also under ``torch.cuda.set_sync_debug_mode``), held to each component's documented
number."""

from __future__ import annotations

import pytest
import torch

from hierot import CPCCLoss, Hierarchy, list_distances
from hierot.distances.sinkhorn import sinkhorn_plans
from hierot.objectives import build_objective, list_objectives
from hierot.syncs import SyncCounter

TREE = Hierarchy.from_paths([[f"t{c // 8}", f"m{c // 4}", f"c{c}"] for c in range(24)])

# The host's waits of a distance's CPCC forward and backward, as its docstring states: one
# read of the class sizes of a batch (``group_by_class``: which classes, how many samples);
# emd also copies the cost matrices to POT on the CPU. sinkhorn is bounded in
# test_sinkhorn_waits_once_per_convergence_check.
DISTANCE_WAITS = {"l2": 1, "l1": 1, "fastft": 1, "swd": 1, "hyperbolic": 1, "emd": 2}


def batch(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g).to(device).requires_grad_()
    y = torch.randint(0, 24, (64,), generator=g).to(device)
    return z, y


def test_the_counter_counts_what_makes_a_gpu_wait_and_nothing_else():
    x = torch.arange(8.0)
    with SyncCounter() as syncs:
        _ = x * 2 + 1, x.sum(), x.cumsum(0), torch.where(x > 3, x, 0)
        _ = x.repeat_interleave(torch.tensor([1, 2] * 4), output_size=12)
        assert syncs.total == 0
        _ = float(x.sum()), bool(x[0] > 1), x.tolist(), x.cpu()
        _ = torch.unique(x), x.nonzero(), x[x > 3], x.repeat_interleave(torch.tensor([1, 2] * 4))
        with syncs.pause():
            _ = float(x.sum())
    assert dict(syncs.counts) == {
        "_local_scalar_dense": 2,
        "tolist": 1,
        "cpu": 1,
        "_unique2": 1,
        "nonzero": 1,
        "boolean index": 1,
        "repeat_interleave": 1,
    }


@pytest.mark.parametrize("method", sorted(DISTANCE_WAITS))
def test_each_distance_waits_as_documented(method):
    z, y = batch()
    loss = CPCCLoss(TREE, method)
    with SyncCounter() as syncs:
        loss(z, y).backward()
    assert syncs.total == DISTANCE_WAITS[method], dict(syncs.counts)


def test_every_registered_distance_has_a_documented_number():
    assert set(list_distances()) == {*DISTANCE_WAITS, "sinkhorn"}


def test_sinkhorn_waits_once_per_convergence_check(monkeypatch):
    """sinkhorn: one read that sizes the annealing, and one per convergence check (every
    ``check_every`` iterations), however many annealing stages run."""
    from hierot.distances import sinkhorn

    checks = []
    steps = sinkhorn._Iterate._steps
    monkeypatch.setattr(
        sinkhorn._Iterate, "_steps", lambda self, *a: checks.append(1) or steps(self, *a)
    )
    g = torch.Generator().manual_seed(1)
    cost = torch.rand(6, 5, 5, generator=g) * 100  # a wide range: many annealing stages
    valid = torch.ones(6, 5, dtype=torch.bool)
    stages = []
    anneal = sinkhorn._stages
    monkeypatch.setattr(sinkhorn, "_stages", lambda *a: stages.append(anneal(*a)) or stages[-1])
    with SyncCounter() as syncs:
        sinkhorn_plans(cost, valid, valid, 0.05, check_every=10)
    assert stages[0] >= 10 and len(checks) >= 1
    assert syncs.total == 1 + len(checks), dict(syncs.counts)
    # and in CPCC: the class sizes once more
    z, y = batch()
    checks.clear()
    with SyncCounter() as syncs:
        CPCCLoss(TREE, "sinkhorn", reg=0.5)(z, y).backward()
    assert syncs.total == 2 + len(checks), dict(syncs.counts)


@pytest.mark.parametrize("name", list_objectives())
def test_no_objective_waits(name):
    z, y = batch()
    logits = torch.randn(64, 24, requires_grad=True)
    objective = build_objective(name, TREE, 16, {})
    with SyncCounter() as syncs:
        objective(z, logits, y).backward()
    assert syncs.total == 0, dict(syncs.counts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("method", sorted(DISTANCE_WAITS))
def test_on_cuda_the_distances_wait_only_where_counted(method):
    """Under sync debug mode a CUDA sync warns; the count of warnings is the count above."""
    import warnings

    z, y = batch("cuda")
    loss = CPCCLoss(TREE, method).cuda()
    loss(z, y).backward()  # warm-up: lazy CUDA initialisation syncs once
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss(z, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    synced = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(synced) <= DISTANCE_WAITS[method], [str(w.message) for w in synced]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "at_most"),
    [
        ([], 2.0),
        (["dist=none"], 1.0),
        (["objective=quadruplet"], 2.0),
        (["trainer.enable_progress_bar=true"], 2.0),  # hierot.logs.ProgressBar's reads
    ],
)
def test_a_training_step_of_a_real_run_waits_at_most(tmp_path, overrides, at_most):
    """20 steps of python -m hierot.train (the default fastft run, flat cross-entropy):
    the class sizes once per step, Lightning's read of the logged values every
    log_every_n_steps (10), and the divergence check every speed.check_every_n_steps."""
    from helpers.steps import syncs_per_step

    per_step, counts = syncs_per_step(overrides, tmp_path)
    assert per_step <= at_most, dict(counts)
    assert counts["boolean index"] == counts["_unique2"] == counts["repeat_interleave"] == 0
