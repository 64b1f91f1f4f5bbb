import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_worker import (
    COARSE,
    EVAL_SIZE,
    INNER_CASES,
    OBJECTIVE_CASES,
    PER_RANK,
    TinyData,
    inner_model,
    make_data,
    make_model,
)

from hierot.data.coarse import dataset_labels

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_worker(*args: object) -> None:
    """``ddp_worker.py`` with ``args``, bounded; its error output on failure."""
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def one_process_step(
    dist: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """CPCC and parameters after one SGD step (lr 1) on the concatenated batch (rank 0's
    samples first), computed by hand: DDP's loss is the mean over ranks of each rank's mean
    cross-entropy plus the regularizer of the global batch."""
    model = make_model(dist)
    z, logits = model(x)
    ce = (
        F.cross_entropy(logits[:PER_RANK], y[:PER_RANK])
        + F.cross_entropy(logits[PER_RANK:], y[PER_RANK:])
    ) / 2
    reg = model.regularizer(z, y)
    (ce + reg).backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
    return 1 - float(reg.detach()), {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("dist", ["fastft", "emd"])
def test_two_ddp_processes_match_one_process_on_the_global_batch(tmp_path, dist):
    run_worker(tmp_path, dist)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    # each rank saw its half of the data ...
    x = torch.cat([ranks[0]["batch"][0], ranks[1]["batch"][0]])
    y = torch.cat([ranks[0]["batch"][1], ranks[1]["batch"][1]])
    assert len(ranks[0]["batch"][1]) == len(ranks[1]["batch"][1]) == PER_RANK
    assert sorted(y.tolist()) == sorted(make_data()[1].tolist())
    cpcc, params = one_process_step(dist, x, y)
    # ... but computed the CPCC of the whole one
    assert ranks[0]["cpcc"] == pytest.approx(cpcc, abs=1e-5)
    assert ranks[1]["cpcc"] == pytest.approx(cpcc, abs=1e-5)
    # and the step equals one process's step on the concatenated batch
    start = make_model(dist).state_dict()
    for name, value in params.items():
        torch.testing.assert_close(ranks[0]["params"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=1e-5, atol=1e-6)
    moved = (params["head.weight"] - start["head.weight"]).abs().max()
    assert moved > 1e-3  # the comparison is not between unchanged parameters


def test_the_local_batch_alone_gives_another_cpcc():
    """Guards the test above: with only rank 0's samples the CPCC would differ."""
    model = make_model("fastft")
    x, y = make_data()
    z, _ = model(x)
    whole = 1 - float(model.regularizer(z, y).detach())
    local = 1 - float(model.regularizer(z[:PER_RANK], y[:PER_RANK]).detach())
    assert abs(whole - local) > 1e-3


def one_process_objective_step(
    case: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and gradients of one process on the concatenated batch, by hand: the
    objective's loss on every row (``b * views + v``), plus the centring loss of the first
    views' features."""
    objective, options, center, views = OBJECTIVE_CASES[case]
    model = make_model("none", objective, options, center)
    if views > 1:
        x, y = x.flatten(0, 1), y.repeat_interleave(views)
    z, logits = model(x)
    loss = model.objective(z, logits, y) + center * z[::views].mean(0).norm()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(OBJECTIVE_CASES))
def test_objectives_with_batch_wide_terms_see_the_global_batch(tmp_path, case):
    """SupCon's pairs, quadruplets and the centring loss over the global batch: one step on
    2 processes has one process's loss (the mean of the ranks': cross-entropy, a mean over
    samples, stays each rank's) and gradients on the concatenated batch."""
    run_worker(tmp_path, "objective", case)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x = torch.cat([ranks[0]["batch"][0], ranks[1]["batch"][0]])
    y = torch.cat([ranks[0]["batch"][1], ranks[1]["batch"][1]])
    assert sorted(y.tolist()) == sorted(make_data()[1].tolist())
    loss, grads = one_process_objective_step(case, x, y)
    assert (ranks[0]["loss"] + ranks[1]["loss"]) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-6)
    for rank in ranks:
        assert rank["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["supcon", "curriculum"])
def test_staged_objectives_train_on_two_processes_across_their_stages(tmp_path, objective):
    """Each stage leaves some parameters without a gradient (a head waiting for its stage, a
    frozen backbone): DDP still averages every step's gradients, and the ranks end equal."""
    run_worker(tmp_path, "stages", objective)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    start = make_model("none", objective).state_dict()
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0)
    assert not torch.equal(ranks[0]["params"]["head.weight"], start["head.weight"])


@pytest.mark.slow
def test_evaluation_on_two_processes_counts_each_sample_once(tmp_path):
    """Validation (during fit) and test splits of an odd size on 2 processes: every logged
    metric as on one process, none counting a sample twice."""
    assert EVAL_SIZE % 2 == 1
    run_worker(tmp_path, "eval", 1)
    run_worker(tmp_path, "eval", 2)
    one, two = torch.load(tmp_path / "eval1.pt"), torch.load(tmp_path / "eval2.pt")
    assert {"val/acc_fine", "val/loss", "test/acc_fine", "test/cpcc", "test/loss"} <= one.keys()
    assert one.keys() == two.keys()
    for key, value in one.items():
        assert two[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(INNER_CASES))
def test_inner_labels_on_two_processes_match_one_process_on_the_global_batch(tmp_path, case):
    """Training labels moved to inner nodes (``data.coarse_fraction``): both ranks read the
    same relabelled set, each its half of the global batch; the CPCC over the gathered
    features and labels (inner samples left out of the classes, or counted at their node),
    the loss and the step are one process's on the concatenated batch."""
    run_worker(tmp_path, "inner", case)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    x = torch.cat([ranks[0]["batch"][0], ranks[1]["batch"][0]])
    y = torch.cat([ranks[0]["batch"][1], ranks[1]["batch"][1]])
    data = TinyData(coarse_fraction=COARSE)
    data.setup()
    k = data.hierarchy.num_classes
    assert sorted(y.tolist()) == sorted(dataset_labels(data.train_set).tolist())
    assert int((y >= k).sum()) == round(COARSE * len(y))  # a global batch with inner labels
    assert all(int((r["batch"][1] >= k).sum()) > 0 for r in ranks)  # on each rank
    model = inner_model(case, data)
    z, logits = model(x)
    local = [model.objective(z[s], logits[s], y[s]) for s in (slice(0, PER_RANK),
                                                              slice(PER_RANK, None))]  # fmt: skip
    reg = model.regularizer(z, y)
    alone = model.regularizer(z[:PER_RANK], y[:PER_RANK])  # rank 0's half alone: another CPCC
    assert abs(float(alone.detach()) - float(reg.detach())) > 1e-3
    loss = (local[0] + local[1]) / 2 + reg
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= p.grad
    mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
    assert mean_loss == pytest.approx(float(loss.detach()), rel=1e-5)
    for rank in ranks:
        assert rank["cpcc"] == pytest.approx(1 - float(reg.detach()), abs=1e-5)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(rank["params"][name], value, rtol=1e-5, atol=1e-6)
    start = inner_model(case, data).state_dict()["head.weight"]
    assert (model.state_dict()["head.weight"] - start).abs().max() > 1e-3
