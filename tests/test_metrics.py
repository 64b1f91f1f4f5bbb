import pytest
import torch

from hierot import Hierarchy, cpcc
from hierot.distances import EVALUATION_SEED
from hierot.errors import ConfigError
from hierot.metrics import LevelAccuracy, MistakeSeverity, SplitCPCC, class_subsample
from hierot.models.module import level_keys

# classes: 0 x, 1 y, 2 z, 3 u, 4 v
TREE = Hierarchy.from_nested({"a": {"a1": ["x", "y"], "a2": ["z"]}, "b": {"b1": ["u", "v"]}})
TARGET = torch.tensor([0, 0, 1, 2, 3, 4])
PRED = torch.tensor([0, 1, 3, 0, 3, 3])  # right, sibling, other top, cousin, right, sibling


def test_accuracy_at_every_level_of_a_hand_made_batch():
    expected = {1: 5 / 6, 2: 4 / 6, 3: 2 / 6}  # a/b; a1/a2/b1; classes
    for level, acc in expected.items():
        metric = LevelAccuracy(TREE.level_map(level)[1])
        metric.update(PRED, TARGET)
        assert metric.compute().item() == pytest.approx(acc)


def test_level_accuracy_takes_scores_and_accumulates_batches():
    metric = LevelAccuracy(TREE.level_map(1)[1])
    scores = torch.nn.functional.one_hot(PRED, 5).float()
    metric.update(scores[:3], TARGET[:3])
    metric.update(scores[3:], TARGET[3:])
    assert metric.compute().item() == pytest.approx(5 / 6)


def test_mistake_severity_of_a_hand_made_confusion():
    metric = MistakeSeverity(TREE.tree_distances())
    metric.update(PRED, TARGET)
    # mistakes: x->y (2), y->u (6), z->x (4), v->u (2)
    assert metric.compute().item() == pytest.approx((2 + 6 + 4 + 2) / 4)
    perfect = MistakeSeverity(TREE.tree_distances())
    perfect.update(TARGET, TARGET)
    assert perfect.compute().item() == 0


def test_split_cpcc_is_cpcc_of_all_features_at_once():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(60, 8, generator=g)
    y = torch.arange(5).repeat(12)
    z = z + 3 * torch.tensor([[0.0], [0.5], [1.5], [4.0], [4.5]])[y]
    t = TREE.tree_distances()
    metric = SplitCPCC(t, {"cpcc": ("fastft", {}), "cpcc_l2": ("l2", {})})
    for i in range(0, 60, 16):
        metric.update(z[i : i + 16], y[i : i + 16])
    out = metric.compute()
    assert out["cpcc"].item() == pytest.approx(cpcc(z, y, t, "fastft").item(), abs=1e-6)
    assert out["cpcc_l2"].item() == pytest.approx(cpcc(z, y, t, "l2").item(), abs=1e-6)
    assert out["cpcc_l2"].item() > 0.8


def test_level_keys_name_coarse_levels_and_fine():
    assert level_keys(TREE) == {1: "level1", 2: "level2", 3: "fine"}
    assert level_keys(TREE, ["kingdom", "family"]) == {1: "kingdom", 2: "family", 3: "fine"}
    with pytest.raises(ConfigError, match=r"1 names \(only\) but the tree has 2 levels above"):
        level_keys(TREE, ["only"])


def test_split_cpcc_after_a_ddp_sync_holds_tensors():
    # torchmetrics replaces list states by one concatenated tensor when it syncs ranks
    g = torch.Generator().manual_seed(1)
    z = torch.randn(30, 4, generator=g) + torch.arange(5).repeat(6)[:, None] * 2.0
    y = torch.arange(5).repeat(6)
    t = TREE.tree_distances()
    metric = SplitCPCC(t, {"cpcc": ("l2", {})})
    metric.update(z[:10], y[:10])
    metric.update(z[10:], y[10:])
    metric.features, metric.labels = z, y
    assert metric.compute()["cpcc"].item() == pytest.approx(cpcc(z, y, t, "l2").item())


def test_split_cpcc_over_a_class_subset_keeps_only_those_classes():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(60, 4, generator=g) + torch.arange(5).repeat(12)[:, None] * 1.5
    y = torch.arange(5).repeat(12)
    t = TREE.tree_distances()
    subset = torch.tensor([0, 2, 3, 4])
    metric = SplitCPCC(t, {"cpcc": ("fastft", {})}, classes=subset)
    metric.update(z, y)
    kept = torch.isin(y, subset)
    assert torch.cat(metric.labels).unique().tolist() == [0, 2, 3, 4]
    expect = cpcc(z[kept], y[kept], t, "fastft")
    assert metric.compute()["cpcc"].item() == pytest.approx(expect.item(), abs=1e-6)


def test_class_subsample_is_seeded_sorted_and_all_when_small():
    a = class_subsample(10_000, 1000)
    assert a.numel() == 1000 and torch.equal(a, a.sort().values) and a.unique().numel() == 1000
    assert torch.equal(a, class_subsample(10_000, 1000))
    assert class_subsample(24, 1000) is None and class_subsample(24, None) is None


def swd_features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(5).repeat(12)
    z = torch.randn(60, 8, generator=g) + torch.tensor([[0.0], [0.5], [1.5], [4.0], [4.5]])[y]
    return z, y


def test_split_cpcc_of_a_random_distance_repeats_and_leaves_the_global_generator_alone():
    """``dist=swd`` with ``seed: null``: the evaluation's projections come from their own
    generator, so every evaluation gives the same value and training's draws do not move."""
    z, y = swd_features()
    metric = SplitCPCC(TREE.tree_distances(), {"cpcc": ("swd", {"n_projections": 3})})
    values = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        before = torch.get_rng_state()
        metric.reset()
        metric.update(z, y)
        values.append(metric.compute()["cpcc"].item())
        assert torch.equal(torch.get_rng_state(), before)
    assert values[0] == values[1]
    # the same fixed seed as the distance's own ``seed`` option
    seeded = cpcc(z, y, TREE.tree_distances(), "swd", n_projections=3, seed=EVALUATION_SEED)
    assert values[0] == seeded.item()
