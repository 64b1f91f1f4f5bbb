"""One tree-distance matrix per run: the loss and every metric read the module's copy, which
``.to()`` moves once."""

import torch

from hierot.config import build, compose_config
from hierot.correlation import CPCCLoss
from hierot.hierarchy import Hierarchy
from hierot.metrics.epoch import MistakeSeverity

TREE = Hierarchy.from_nested({"a": ["c0", "c1", "c2"], "b": ["c3", "c4"]})


def square_buffers(module: torch.nn.Module, k: int) -> list[torch.Tensor]:
    """Every (k, k) buffer of every submodule, duplicates included."""
    return [
        b for m in module.modules() for b in m._buffers.values()
        if b is not None and tuple(b.shape) == (k, k)
    ]  # fmt: skip


def test_the_run_holds_one_tree_distance_matrix_before_and_after_to():
    cfg = compose_config([])
    module = build(cfg.model, "model")(
        backbone=build(cfg.backbone, "backbone"),
        hierarchy=TREE,
        optimizer=build(cfg.optimizer, "optimizer"),
    )
    assert len(square_buffers(module, 5)) == 1
    module = module.to(torch.float64)  # as .to("cuda") would, every buffer is replaced
    (matrix,) = square_buffers(module, 5)
    assert matrix.dtype == torch.float64
    readers = [
        module.regularizer,
        module.val_cpcc,
        module.test_cpcc,
        module.val_metrics["mistake_severity"],
        module.test_metrics["mistake_severity"],
    ]
    assert all(r.tree_dist is matrix for r in readers)  # every reader sees the moved copy
    torch.testing.assert_close(matrix, TREE.tree_distances().double())


def test_loss_and_metric_on_their_own_keep_their_own_copy():
    loss = CPCCLoss(TREE, "l2").to(torch.float64)
    assert loss.tree_dist.dtype == torch.float64 and len(square_buffers(loss, 5)) == 1
    severity = MistakeSeverity(TREE.tree_distances())
    severity.update(torch.tensor([1, 3]), torch.tensor([0, 0]))  # siblings 2, cousins 4
    assert float(severity.compute()) == 3.0
