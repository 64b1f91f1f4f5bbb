"""Resumable runs, in-process: the training order and its saved position, atomic checkpoint
writes, finding the checkpoint to resume from, the settings' checks, the divergence stop.
The faults injected into real processes are in ``test_faults.py``."""

import csv
import json
import os
import random
import signal
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hierot.config import compose_config
from hierot.data.module import device_batch
from hierot.data.sampling import ResumableSampler, rng_states, set_rng_states
from hierot.errors import ConfigError, DiskFull, Diverged
from hierot.resume import RESUME_NAME, resume_path
from hierot.stopping import parse_signals
from hierot.syncs import SyncCounter
from hierot.writes import write_atomic


def batches(sampler: ResumableSampler) -> list[list[int]]:
    loader = DataLoader(list(range(sampler.n)), batch_size=sampler.local_batch, sampler=sampler)
    return [b.tolist() for b in loader]


def test_one_process_order_is_dataloader_shuffle():
    """The default run's numbers stay as they were: same seed draw, same permutation, same
    batches as ``DataLoader(shuffle=True, drop_last=True)``, epoch after epoch."""
    torch.manual_seed(3)
    reference = DataLoader(list(range(100)), batch_size=16, shuffle=True, drop_last=True)
    expected = [[b.tolist() for b in reference] for _ in range(3)]
    after_reference = torch.get_rng_state()
    torch.manual_seed(3)
    sampler = ResumableSampler(100, 16)
    got = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        got.append(batches(sampler))
    assert got == expected and len(got[0]) == 6
    assert torch.equal(torch.get_rng_state(), after_reference)  # drew exactly as much


@pytest.mark.parametrize(
    ("n", "world", "drop_last"), [(100, 2, True), (100, 4, True), (10, 4, False)]
)
def test_ranks_together_read_the_global_batches(n, world, drop_last):
    batch = 8 if n > 10 else 16
    torch.manual_seed(0)
    whole = batches(ResumableSampler(n, batch, drop_last=drop_last))
    parts = []
    for rank in range(world):
        torch.manual_seed(0)
        parts.append(batches(ResumableSampler(n, batch, rank, world, drop_last=drop_last)))
    assert len({len(p) for p in parts}) == 1  # every rank takes as many steps
    for step, global_batch in enumerate(whole):
        joined = [i for part in parts for i in part[step]]
        if drop_last:
            assert joined == global_batch
        else:  # a partial tail: split evenly, padded by wrapping around
            assert set(global_batch) <= set(joined) and len(joined) == 4 * 3


def test_sampler_resumes_mid_epoch_with_order_and_random_state():
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002
    random.seed(1)
    sampler = ResumableSampler(64, 8, progress=lambda: (3, False))
    it = iter(DataLoader(list(range(64)), batch_size=8, sampler=sampler))
    seen = [next(it).tolist() for _ in range(3)]
    state = sampler.state_dict()  # after 3 batches, as a checkpoint at that step
    expected_rest = [b.tolist() for b in it]
    expected_draws = (torch.rand(2), np.random.rand(), random.random())  # noqa: NPY002

    torch.manual_seed(99)  # a new process: other random states, other seeds
    resumed = ResumableSampler(64, 8)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert rest == expected_rest and len(seen) + len(rest) == 8
    draws = (torch.rand(2), np.random.rand(), random.random())  # noqa: NPY002
    assert torch.equal(draws[0], expected_draws[0]) and draws[1:] == expected_draws[1:]


def test_sampler_saved_after_an_epoch_starts_the_next_one():
    torch.manual_seed(2)
    sampler = ResumableSampler(32, 8, progress=lambda: (4, True))
    batches(sampler)
    state = sampler.state_dict()
    sampler.set_epoch(1)
    expected = batches(sampler)  # a new DataLoader iterator draws its seed first

    torch.manual_seed(5)
    resumed = ResumableSampler(32, 8)
    resumed.load_state_dict(state, draws_per_epoch=1)
    assert resumed.epoch == 1 and batches(resumed) == expected


def test_rng_states_survive_a_weights_only_load(tmp_path):
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = torch.rand(3)
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected)


def test_global_batch_must_split_across_devices():
    assert device_batch(128, 8) == 16
    with pytest.raises(ConfigError, match=r"data.batch_size 100 .* across 8 devices"):
        device_batch(100, 8)
    with pytest.raises(ConfigError, match=r"batch_size 30 .* 4 devices"):
        from hierot.config import check_config

        check_config(
            compose_config(["data.batch_size=30", "trainer.devices=2", "trainer.num_nodes=2"])
        )


def test_write_atomic_replaces_whole_or_reports_the_bytes(tmp_path):
    path = tmp_path / "a.ckpt"
    write_atomic(path, b"old")
    write_atomic(path, b"new!")
    assert path.read_bytes() == b"new!" and [p.name for p in tmp_path.iterdir()] == ["a.ckpt"]


def test_json_and_csv_are_written_through_the_same_atomic_write(tmp_path, monkeypatch):
    from hierot import writes
    from hierot.report import write_metrics
    from hierot.sweep import write_csv

    written = []
    real = writes.write_atomic
    monkeypatch.setattr(writes, "write_atomic", lambda p, d: written.append(p.name) or real(p, d))
    write_metrics(tmp_path / "metrics.json", {"test/cpcc": float("nan"), "steps": 3})
    rows = [{"job": 0, "status": "completed", "lam": 0.5, "test/cpcc": None}]
    write_csv(tmp_path / "summary.csv", rows)
    assert written == ["metrics.json", "summary.csv"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test/cpcc": None, "steps": 3}
    with open(tmp_path / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert [row[k] for k in ("job", "status", "lam", "test/cpcc")] == ["0", "completed", "0.5", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "summary.csv"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_write_atomic_on_a_full_device_names_path_and_bytes(tmp_path, monkeypatch):
    # /dev/full answers every write with ENOSPC; the real small filesystem is in test_faults
    import builtins

    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".tmp") and "w" in mode:
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_open)
    path = tmp_path / "x.ckpt"
    with pytest.raises(DiskFull, match=r"x.ckpt: writing it needs 10000 bytes"):
        write_atomic(path, b"0" * 10000)


def test_resume_path_auto_takes_the_newest_and_starts_fresh_without_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert resume_path("auto", tmp_path) is None
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["best-epoch00.ckpt", "last.ckpt", RESUME_NAME]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, ns=(time.time_ns(), 10**18 + i * 10**9))
    assert resume_path("auto", tmp_path) == str(folder / RESUME_NAME)
    os.utime(folder / "last.ckpt", ns=(time.time_ns(), 10**18 + 5 * 10**9))
    assert resume_path("auto", tmp_path) == str(folder / "last.ckpt")
    assert resume_path(None, tmp_path) is None  # not asked to, not requeued
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_path(None, tmp_path) == str(folder / "last.ckpt")  # a requeued SLURM job
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert resume_path(None, tmp_path) == str(folder / "last.ckpt")  # a submitit job
    assert resume_path("x.ckpt", tmp_path) == "x.ckpt"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("every_n_steps", 0, "checkpoint.every_n_steps must be an integer >= 1"),
        ("every_minutes", "soon", "checkpoint.every_minutes must be a number"),
        ("stop_signals", ["SIGKILL"], "checkpoint.stop_signals: 'SIGKILL' is not a signal"),
        ("stop_signals", ["HUP", "nope"], "'nope' is not a signal"),
        ("requeue", "yes", "checkpoint.requeue must be true or false"),
    ],
)
def test_checkpoint_settings_fail_in_one_line(key, value, message):
    from hierot.config import check_config

    cfg = compose_config()
    cfg.checkpoint[key] = value
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


def test_signal_names_with_or_without_sig():
    assert parse_signals(["TERM", "SIGUSR1", "usr2"]) == [
        signal.SIGTERM,
        signal.SIGUSR1,
        signal.SIGUSR2,
    ]


def test_ckpt_path_auto_passes_the_config_check():
    from hierot.config import check_config

    check_config(compose_config(["ckpt_path=auto"]))
    with pytest.raises(ConfigError, match="ckpt_path: no such checkpoint"):
        check_config(compose_config(["ckpt_path=nowhere.ckpt"]))


def make_module():
    from hierot.config import build
    from hierot.hierarchy import Hierarchy

    cfg = compose_config([])
    tree = Hierarchy.from_nested({"a": ["c0", "c1"], "b": ["c2", "c3"]})
    return build(cfg.model, "model")(
        backbone=build(cfg.backbone, "backbone"),
        hierarchy=tree,
        optimizer=build(cfg.optimizer, "optimizer"),
    )


def test_a_non_finite_loss_is_recorded_on_the_device_and_raised_at_the_next_read():
    module = make_module()
    one = torch.tensor(1.0)
    nan = torch.tensor(float("nan"))
    x = torch.zeros(2, 3, 4, 4)
    module._check_finite(one, one, one, x, 0)
    module.raise_if_diverged()  # finite: nothing happens
    with SyncCounter() as syncs:  # the step's check reads nothing
        module._check_finite(nan, one, nan, x, 3)
        module._check_finite(one, one, one, x, 4)  # a later good step keeps the first
    assert syncs.total == 0
    with pytest.raises(Diverged, match=r"step 0 .*batch 3\): cpcc not finite \(ce 1, cpcc nan\)"):
        module.raise_if_diverged()
    module = make_module()
    module._check_finite(nan, nan, None, torch.full((2, 3, 4, 4), float("inf")), 0)
    with pytest.raises(Diverged, match=r"ce not finite \(ce nan\); .*non-finite pixels"):
        module.raise_if_diverged()
    # a finite loss, but the forward pass overflowed a batch-norm statistic
    module = make_module()
    module._check_finite(one, one, one, x, 0)
    module.backbone.bn1.running_var[0] = float("inf")
    with pytest.raises(Diverged, match=r"backbone.bn1.running_var not finite \(1 statistics"):
        module.raise_if_diverged()
    # and no checkpoint is made of such weights
    with pytest.raises(Diverged):
        module.on_save_checkpoint({})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_a_log_write_without_space_is_one_line_naming_the_file():
    import logging

    from hierot.logs import LogFileHandler

    handler = LogFileHandler("/dev/full")  # every write to it fails with ENOSPC
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "epoch 1/3 ...", None, None)
    with pytest.raises(
        DiskFull, match=r"^no space left on the device of /dev/full: .*\d+ more bytes"
    ):
        handler.emit(record)
