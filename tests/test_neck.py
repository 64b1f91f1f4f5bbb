"""``objective.options.neck`` of ``haf`` and ``flamingo`` (hierot/objectives/neck.py): the
references' layers and settings, the running statistics moved by the loss's pass alone, the
option checks, no neck by default, and in the model: the neck trained by the optimizer, CPCC
on the features before it, and a checkpoint that loads it weights-only. Equality with the
references: tests/test_haf.py and tests/test_flamingo.py."""

import io
import math
from functools import partial

import pytest
import torch
from torch import nn

from hierot.objectives import build_objective, check_objective
from hierot.objectives.neck import Neck

from helpers.necks import randomize_neck
from helpers.runs import loaded_test_scores
from helpers.trees import TREES

OBJECTIVES = ["haf", "flamingo"]


def test_the_neck_is_the_references_features_1():
    neck = Neck(5, 7)
    assert [type(m) for m in neck] == [nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.ELU]
    bn1, linear, bn2, elu = neck
    assert (bn1.num_features, linear.in_features, linear.out_features, bn2.num_features) == (
        5, 5, 7, 7)  # fmt: skip
    assert all(bn.eps == 1e-5 and bn.momentum == 0.1 and bn.affine for bn in (bn1, bn2))
    assert linear.bias is not None and elu.alpha == 1.0
    assert set(neck.state_dict()) == {
        f"{i}.{k}" for i in (0, 2) for k in
        ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    } | {"1.weight", "1.bias"}  # fmt: skip


def test_only_the_updating_pass_moves_the_running_statistics():
    neck = Neck(4, 6).double()
    randomize_neck(neck, 0)
    x = torch.randn(10, 4, dtype=torch.float64)
    before = {k: v.clone() for k, v in neck.state_dict().items()}
    quiet = neck(x, update=False)
    assert all(torch.equal(v, before[k]) for k, v in neck.state_dict().items())
    moved = neck(x)
    torch.testing.assert_close(quiet, moved, rtol=0, atol=0)
    assert not torch.equal(neck[0].running_mean, before["0.running_mean"])
    assert int(neck[2].num_batches_tracked) == 1
    neck.eval()  # eval mode: the running statistics, with or without update
    torch.testing.assert_close(neck(x, update=False), neck(x), rtol=0, atol=0)


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize(
    "neck, message",
    [(-1, "got -1"), (1.5, "got 1.5"), (True, "got True"), ("600", "got '600'")],
)
def test_bad_necks_are_one_line(objective, neck, message):
    with pytest.raises(ValueError) as info:
        check_objective(objective, {"neck": neck}, TREES["3 levels"])
    expected = f"{objective}: neck must be an integer >= 0 (its hidden units; 0 or null: no neck)"
    assert f"{expected}, {message}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_no_neck_by_default_and_with_0(objective):
    tree = TREES["3 levels"]
    default = build_objective(objective, tree, 12)
    assert default.neck is None and default.options["neck"] is None
    assert not any(k.startswith("neck") for k in build_objective(objective, tree, 12, {"neck": 0})
                   .state_dict())  # fmt: skip
    fine = build_objective(objective, tree, 12, {"neck": 9}).heads[-1]
    assert fine.in_features == {"haf": 9, "flamingo": 3}[objective]  # the neck's 9 (3 x 3)


def test_flamingo_cuts_the_necks_output():
    tree = TREES["3 levels"]
    ours = build_objective("flamingo", tree, 5, {"neck": 14})
    assert ours.sizes == [4, 4, 6] and [h.in_features for h in ours.heads] == [14, 10, 6]
    assert build_objective("flamingo", tree, 5, {"neck": 14, "sizes": [2, 5, 7]}).starts == [
        0, 2, 7, 14]  # fmt: skip
    with pytest.raises(ValueError) as info:
        build_objective("flamingo", tree, 12, {"neck": 14, "sizes": [4, 4, 4]})
    assert "sizes [4, 4, 4] add up to 12, not to the neck's 14 features" in str(info.value)


def module(objective: str, **options):
    from hierot.models import HierarchyModule

    torch.manual_seed(0)
    backbone = nn.Linear(5, 4)
    backbone.num_features = 4
    sgd = partial(torch.optim.SGD, lr=0.1)
    return HierarchyModule(backbone, TREES["3 levels"], sgd, dist="l2", lam=1.0,
                           objective=objective, objective_options=options)  # fmt: skip


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_the_model_trains_the_neck_regularises_before_it_and_saves_it(objective):
    m = module(objective, neck=6)
    neck = m.objective.neck
    optimizer = m.configure_optimizers()
    given = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in neck.parameters()} <= given
    x, y = torch.randn(16, 5), torch.arange(16) % 12
    z, logits = m._head_forward(x)
    assert z.shape[1] == 4  # the backbone's features, before the neck
    loss, _, reg = m._losses(z, logits, y)
    torch.testing.assert_close(reg, m.regularizer(z, y))  # CPCC on those features
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in neck.parameters())
    assert int(neck[0].num_batches_tracked) == 1  # one step, one update
    # the checkpoint's state dict holds the neck and loads weights-only into a fresh model
    state = m.state_dict()
    keys = {k for k in state if k.startswith("objective.neck.")}
    assert {"objective.neck.0.running_mean", "objective.neck.1.weight",
            "objective.neck.2.num_batches_tracked"} <= keys  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = module(objective, neck=6)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    m.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[1], m(x)[1], rtol=0, atol=0)


@pytest.mark.slow
def test_a_run_with_the_neck_and_cpcc_tests_with_the_scores_its_checkpoint_gives(tmp_path):
    # the command line's overrides on the embedded data: haf (its margin term's second pass
    # over the batch) on a 16-unit neck with CPCC (l2) on the backbone's features; the
    # checkpoint holds the neck, loads weights-only, and gives the run's test metrics
    import json

    import torch.nn.functional as F

    from hierot.checkpoints import load_trained, run_datamodule
    from hierot.config import compose_config
    from hierot.train import train

    out = tmp_path / "run"
    overrides = ["debug=tiny", "trainer.limit_val_batches=1", "objective=haf",
                 "objective.options.neck=16", "dist=l2", f"output_dir={out}"]  # fmt: skip
    train(compose_config(overrides))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["objective"] == "haf"
    assert all(math.isfinite(metrics[k]) for k in ("test/cpcc", "test/loss", "test/acc_fine"))
    ckpt = out / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert saved["objective.neck.1.weight"].shape[0] == 16
    assert int(saved["objective.neck.0.num_batches_tracked"]) > 0
    module, data = load_trained(ckpt), run_datamodule(ckpt)
    assert torch.equal(module.objective.neck[2].running_var, saved["objective.neck.2.running_var"])
    assert module.objective.heads[0].in_features == 16 and not module.training
    scores, y = loaded_test_scores(module, data)
    acc = float((scores.argmax(1) == y).double().mean())
    assert metrics["test/acc_fine"] == pytest.approx(acc, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(float(F.cross_entropy(scores, y)), rel=1e-4)
