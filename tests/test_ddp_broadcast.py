"""DDP broadcasts the backbone's statistics and none of the tensors derived from the tree
(``HierarchyModule._ddp_params_and_buffers_to_ignore``), so a step at 10 000 classes costs
what a step at 24 does (issue 29). ``scripts/bench_ddp.py`` measures it; its CSV is
``docs/results/bench_ddp.csv``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

SCRIPT = Path(__file__).parents[1] / "scripts" / "bench_ddp.py"
_spec = importlib.util.spec_from_file_location("bench_ddp", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

# The backbone's batch-norm buffers: running mean and variance (float32) of 32, 64 and 32
# channels, and one int64 num_batches_tracked each.
BACKBONE_BYTES = 2 * (32 + 64 + 32) * 4 + 3 * 8


def test_the_backbone_buffers_are_what_the_count_expects():
    backbone = bench.SmallCNN()
    assert bench.buffer_bytes(backbone) == BACKBONE_BYTES == 1048
    assert {n.rsplit(".", 1)[1] for n, _ in backbone.named_buffers()} == {
        "running_mean", "running_var", "num_batches_tracked"
    }  # fmt: skip


def test_a_ddp_forward_broadcasts_the_backbone_statistics_only():
    # torch's DDP on a one-process gloo group, in this process: the buffer sync before each
    # forward runs as with more ranks
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        sent = {}
        for ignore in (True, False):
            module = bench.make_module(24, ignore)
            ddp = DistributedDataParallel(module)
            with bench.Broadcasts() as broadcasts:
                ddp(torch.randn(4, 3, 32, 32))
                ddp(torch.randn(4, 3, 32, 32))
            sent[ignore] = broadcasts.bytes / broadcasts.calls
        assert dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()
    assert sent[True] == BACKBONE_BYTES
    # guard: without the ignore list the same count sees every buffer, the tree's included
    everything = bench.buffer_bytes(bench.make_module(24))
    assert everything > BACKBONE_BYTES + 24 * 24 * 4
    assert sent[False] == everything
    # and the patched function is put back
    assert torch.distributed._broadcast_coalesced.__name__ != "counted"


# The step's time at 10 000 classes against 24 (within 10 %) and the bytes broadcast at both
# sizes on two real gloo processes: python scripts/bench_ddp.py --quick (a measurement,
# 1-2 minutes, not a timed test).
