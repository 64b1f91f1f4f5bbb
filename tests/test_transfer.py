import csv
import json
import subprocess
import sys

import pytest
import torch

from hierot.config import compose_config
from hierot.errors import ConfigError
from hierot.train import train
from hierot.transfer import fit_head, kshot_indices, precheck

TINY = ["debug=tiny"]


def test_kshot_draws_shots_per_label_reproducibly():
    labels = torch.tensor([0, 1, 2, 0, 1, 0, 0, 2, 1, 3])
    chosen = kshot_indices(labels, 2, seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [2, 2, 2, 1]  # label 3 has one image
    assert torch.equal(chosen, chosen.sort().values)
    assert torch.equal(chosen, kshot_indices(labels, 2, seed=0))
    draws = {tuple(kshot_indices(labels, 1, seed=s).tolist()) for s in range(20)}
    assert len(draws) > 5  # the seed picks the images
    assert torch.equal(kshot_indices(labels, 10, seed=3), torch.arange(10))


def test_linear_head_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(4, 8, generator=g)
    y = torch.arange(4).repeat(3)
    z = centres[y] + 0.1 * torch.randn(12, 8, generator=g)
    head = {"epochs": 100, "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0, "step": 60,
            "gamma": 0.1}  # fmt: skip
    linear = fit_head(z, y, 4, head, seed=0)
    assert torch.equal(linear(z).argmax(1), y)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    train(compose_config([*TINY, "data.split=source", f"output_dir={out}"]))
    return out


@pytest.mark.slow
def test_transfer_sweeps_seeds_and_shots_on_the_target_split(source_run, tmp_path):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    run = subprocess.run(
        [sys.executable, "-m", "hierot.transfer", "-m", f"ckpt={ckpt}", "seed=0,1", "shots=1,2",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = [
        json.loads((tmp_path / "sweep" / str(j) / "metrics.json").read_text()) for j in range(4)
    ]
    assert [(m["seed"], m["shots"]) for m in jobs] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for m in jobs:
        assert m["level"] == "fine" and m["classes"] == 24 and m["source_classes"] == 24
        assert m["data.split"] == "target"  # the run's data config, other half of the modes
        assert m["train_images"] == 24 * m["shots"]  # 4 target training images per class
        assert m["test_images"] == 48  # the target split's test images (2 per class)
        assert 0 <= m["transfer/acc_fine"] <= m["transfer/acc_top5"] <= 1
    # one table: the mean and spread over the seeds of each shot count
    with (tmp_path / "sweep" / "summary_seeds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["shots"], r["jobs"]) for r in rows] == [("1", "2"), ("2", "2")]
    for row in rows:
        accs = [m["transfer/acc_fine"] for m in jobs if str(m["shots"]) == row["shots"]]
        assert float(row["transfer/acc_fine"]) == pytest.approx(sum(accs) / 2, abs=1e-9)
        spread = abs(accs[0] - accs[1]) / 2**0.5  # the sample std of two values
        assert float(row["transfer/acc_fine_std"]) == pytest.approx(spread, abs=1e-9)
    assert "mean over seed of each setting:" in run.stdout
    # progress on the long parts: the features of each split, the head's epochs
    assert "features of the train split: 96/96 images" in run.stdout
    assert "features of the test split: 48/48 images" in run.stdout
    assert "linear head: epoch" in run.stdout


@pytest.mark.slow
def test_transfer_refuses_bad_input_in_one_line(source_run, tmp_path):
    ckpt = source_run / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match="shots must be an integer >= 1, got 0"):
        precheck([f"ckpt={ckpt}", "shots=0"])
    with pytest.raises(ConfigError, match="seed must be an integer >= 0, got 'x'"):
        precheck([f"ckpt={ckpt}", "seed=x"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda: torch finds no CUDA device here"):
            precheck([f"ckpt={ckpt}", "device=cuda"])
    flat = tmp_path / "flat"
    train(compose_config([*TINY, f"output_dir={flat}", "trainer.fast_dev_run=true"]))
    (flat / "checkpoints").mkdir(exist_ok=True)
    torch.save({"state_dict": {}}, flat / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match=r"its run trained on data\.split='all'"):
        precheck([f"ckpt={flat / 'checkpoints' / 'last.ckpt'}"])
    run = subprocess.run(
        [sys.executable, "-m", "hierot.transfer", f"ckpt={ckpt}", "level=species",
         f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip() == (
        "hierot: error: level: unknown 'species'; this tree has palette, shape, fine"
    )
    assert not (tmp_path / "out").exists()
