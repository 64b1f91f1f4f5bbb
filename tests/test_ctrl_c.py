"""Ctrl-C (SIGINT), in-process: the graceful stop takes it by default, outside training it is
``Cancelled`` (one line and exit 130 at an entry point), forked DataLoader workers leave it to
the run. A real SIGINT to a real run is in ``test_faults.py``."""

import os
import signal
import sys
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from hierot.cli import run_checked
from hierot.config import compose_config
from hierot.errors import Interrupted
from hierot.stopping import Cancelled, GracefulStop, ctrl_c_cancels, parse_signals


@pytest.fixture(autouse=True)
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) around each test, as a script has."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def ctrl_c() -> None:
    """SIGINT to this process (its Python handler runs at the next bytecode)."""
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)


def test_ctrl_c_is_a_stop_signal_by_default(tmp_path):
    assert signal.SIGINT in parse_signals(compose_config().checkpoint.stop_signals)
    assert signal.SIGINT in GracefulStop(tmp_path / "resume.ckpt").signals


def test_a_graceful_stop_by_ctrl_c_hands_nothing_over(tmp_path):
    stop = GracefulStop(tmp_path / "resume.ckpt", ["SIGINT"], requeue=True)
    stop.install()
    try:
        ctrl_c()  # noted, no KeyboardInterrupt: the run stops after its step
    finally:
        stop.restore()
    assert stop.received == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    stop.hand_over()  # Python's handler, the one before the run, is not called again


class SeenByWorker(torch.utils.data.Dataset):
    """Item i: the signal ``stop`` has noted, as the DataLoader worker sees it after a
    Ctrl-C to itself (a terminal sends it to every process of the run)."""

    def __init__(self, stop: GracefulStop) -> None:
        self.stop = stop

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> int:
        ctrl_c()
        return int(self.stop.received or 0)


def test_dataloader_workers_leave_ctrl_c_to_the_run(tmp_path):
    stop = GracefulStop(tmp_path / "resume.ckpt", ["SIGINT"])
    stop.install()
    try:
        loader = DataLoader(SeenByWorker(stop), num_workers=1, multiprocessing_context="fork")
        seen = [int(b) for b in loader]
    finally:
        stop.restore()
    assert seen == [0, 0] and stop.received is None


def test_a_second_ctrl_c_in_a_python_session_is_a_keyboard_interrupt(tmp_path):
    """Not an exit: a notebook's kernel outlives it (an entry point exits at once, 130)."""
    stop = GracefulStop(tmp_path / "resume.ckpt", ["SIGINT"])
    stop.install()
    try:
        ctrl_c()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c()
    finally:
        stop.restore()
    assert stop.received == signal.SIGINT


def test_ctrl_c_in_the_test_after_training_stops_with_the_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    stop = GracefulStop(tmp_path / "checkpoints" / "resume.ckpt", ["SIGINT"])
    trainer = SimpleNamespace(world_size=1, global_step=45, current_epoch=1)
    stop.on_test_batch_end(trainer)  # no signal: the test goes on
    stop.received = signal.SIGINT
    with pytest.raises(Interrupted) as info:
        stop.on_test_batch_end(trainer)
    assert str(info.value) == (
        "stopped by SIGINT in the test, after training's step 45 (epoch 1); "
        f"checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}"
    )
    assert info.value.exit_code == 130


def test_ctrl_c_outside_training_is_cancelled_and_python_s_handler_comes_back():
    with pytest.raises(Cancelled), ctrl_c_cancels():
        ctrl_c()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_forked_worker_leaves_ctrl_c_to_the_process_that_started_it():
    with ctrl_c_cancels():
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            code = 0
            try:
                ctrl_c()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class Predictor(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def predict_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if batch_idx == 1:
            ctrl_c()
        return self.layer(batch)


def test_lightning_passes_cancelled_on_where_it_ends_a_keyboard_interrupt_with_exit_1(tmp_path):
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(Cancelled), ctrl_c_cancels():
        trainer.predict(Predictor(), DataLoader(torch.zeros(8, 2), batch_size=2))


def test_ctrl_c_at_an_entry_point_is_one_line_and_exit_130(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["hierot.evaluate", "ckpt=x.ckpt"])
    with pytest.raises(SystemExit) as info:
        run_checked(lambda overrides: None, ctrl_c)
    assert info.value.code == 130
    assert capsys.readouterr().err == "hierot: interrupted (Ctrl-C)\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
