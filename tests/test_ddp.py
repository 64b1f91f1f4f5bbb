import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_worker import PER_RANK, make_data, make_model

WORKER = Path(__file__).with_name("ddp_worker.py")


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
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), dist],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
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
