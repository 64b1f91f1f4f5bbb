"""Faults injected into real training processes: signals, SIGKILLs, a non-finite loss, a
full filesystem, simultaneous starts. Each uses ``scripts/fault_injection.py`` (which a user
reruns on their cluster, with more kills) on a run of 135 steps."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hierot.resume import RESUME_NAME

SCRIPT = Path(__file__).parents[1] / "scripts" / "fault_injection.py"
spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One folder for the module: the uninterrupted reference run is made once."""
    return tmp_path_factory.mktemp("faults")


@pytest.mark.slow
def test_sigterm_stops_after_a_step_and_the_resumed_run_ends_equal(out):
    row = faults.sigterm(out, [], "SIGTERM")
    # the checkpoint is of the very step the run stopped after; the resumed run's final
    # metrics equal the uninterrupted run's, bit for bit (deterministic CPU run)
    assert row["steps_lost_max"] == 0
    assert row["final_metric_diff_max"] == 0.0
    assert "exit 143" in row["detail"]
    errors = (out / "sigterm.err").read_text()
    assert "Traceback" not in errors  # one line, not a traceback
    assert "hierot: error: stopped by SIGTERM after step" in errors


@pytest.mark.slow
def test_sigkill_at_random_instants_resumes_to_the_same_metrics(out):
    row, records = faults.sigkill(out, [], kills=4, every_n_steps=5, seed=3)
    assert row["final_metric_diff_max"] == 0.0
    # never more than the interval lost, and no kill undid an earlier checkpoint
    assert all(r["step"] - r["checkpoint_step"] <= 5 for r in records), records
    saved = [r["checkpoint_step"] for r in records]
    assert saved == sorted(saved), records
    assert records[-1]["checkpoint_step"] > 0


@pytest.mark.slow
# supcon's boundary (its probe stage, step 60): scripts/fault_injection.py's sigkill_supcon,
# kept out of the suite for its time (80 s)
@pytest.mark.parametrize("objective", ["curriculum"])
def test_sigkill_on_both_sides_of_a_stage_boundary_resumes_to_the_same_metrics(out, objective):
    """Killed just before a staged objective's stage boundary (the resumed run makes the
    transition itself: a new head, a fresh optimizer) and just after it (resumed inside the
    new stage's first epoch: its head, optimizer and schedule kept): bit-equal metrics."""
    row, records = faults.sigkill_staged(out, [], objective, every_n_steps=5)
    boundary = {"curriculum": 15, "supcon": 60}[objective]
    saved = [r["checkpoint_step"] for r in records]
    assert saved[0] < boundary < saved[1], records
    assert row["final_metric_diff_max"] == 0.0, row


@pytest.mark.slow
def test_a_second_signal_ends_the_run_at_once(tmp_path):
    run_dir = tmp_path / "run"
    # batches of 128: a step is long enough for the second signal to land within it
    proc = faults.start(run_dir, *faults.RUN, "data.batch_size=128")
    faults.wait_until(faults.training_started(run_dir))
    proc.send_signal(signal.SIGTERM)
    out = Path(f"{run_dir}.out")
    faults.wait_until(lambda: "SIGTERM received" in out.read_text(), timeout=30, poll=0.01)
    proc.send_signal(signal.SIGTERM)  # while the step and its checkpoint are under way
    assert faults.wait(proc, 60) == 128 + signal.SIGTERM
    assert faults.last_error(run_dir) == "hierot: second signal (SIGTERM): exiting now"


def one_epoch() -> list[str]:
    """``faults.RUN`` shrunk to one epoch of 15 steps."""
    changed = ("trainer.max_epochs=", "data.train_per_class=")
    return [*(a for a in faults.RUN if not a.startswith(changed)),
            "trainer.max_epochs=1", "data.train_per_class=20"]  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_stops_after_a_step_with_a_checkpoint_and_ckpt_path_auto_goes_on(tmp_path):
    """Ctrl-C at a terminal: SIGINT to the run's process group."""
    run_dir = tmp_path / "run"
    proc = faults.start(run_dir, *one_epoch(), group=True)
    faults.wait_until(faults.training_started(run_dir))  # logged before the first step
    faults.send(proc, signal.SIGINT)
    assert faults.wait(proc, 120) == 128 + signal.SIGINT
    errors = Path(f"{run_dir}.err").read_text()
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors[-3000:]
    (line,) = [line for line in errors.splitlines() if line.startswith("hierot:")]
    assert line.startswith("hierot: error: stopped by SIGINT after step"), line
    assert line.endswith(f"hydra.run.dir={run_dir} ckpt_path=auto"), line
    stopped = faults.metrics(run_dir)
    saved = faults.checkpoint_step(run_dir / "checkpoints" / RESUME_NAME)
    assert stopped["status"] == "interrupted" and 0 < saved == stopped["steps"] < 15, stopped
    resumed = faults.start(run_dir, *one_epoch(), "ckpt_path=auto")
    assert faults.wait(resumed, 120) == 0, faults.last_error(run_dir)
    assert f"resuming from {run_dir / 'checkpoints' / RESUME_NAME}" in (
        Path(f"{run_dir}.out").read_text()
    )
    done = faults.metrics(run_dir)
    assert done["status"] == "completed" and done["steps"] == 15, done


@pytest.mark.slow
def test_a_second_ctrl_c_ends_the_run_at_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = faults.start(run_dir, *faults.RUN, "data.batch_size=128", group=True)
    faults.wait_until(faults.training_started(run_dir))
    faults.send(proc, signal.SIGINT)
    out = Path(f"{run_dir}.out")
    faults.wait_until(lambda: "SIGINT received" in out.read_text(), timeout=30, poll=0.01)
    sent = time.monotonic()
    faults.send(proc, signal.SIGINT)  # while the step and its checkpoint are under way
    assert faults.wait(proc, 60) == 128 + signal.SIGINT
    assert time.monotonic() - sent < 10
    errors = Path(f"{run_dir}.err").read_text()
    assert "Traceback" not in errors, errors[-3000:]
    assert faults.last_error(run_dir) == "hierot: second signal (SIGINT): exiting now"


@pytest.mark.slow
def test_sigusr1_in_a_slurm_job_requeues_it_and_the_requeued_job_resumes(tmp_path, out):
    """SLURM simulated: a fake ``scontrol`` on PATH records what it is asked; the requeued
    job is the same command with SLURM_RESTART_COUNT=1 and no ckpt_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    scontrol.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}
    run_dir = tmp_path / "job"
    proc = faults.start(run_dir, *faults.RUN, env=env)
    faults.wait_until(faults.training_started(run_dir))
    proc.send_signal(signal.SIGUSR1)
    assert faults.wait(proc) == 128 + signal.SIGUSR1
    assert (tmp_path / "scontrol.calls").read_text() == "requeue 4242\n"
    requeued = faults.start(run_dir, *faults.RUN, env={**env, "SLURM_RESTART_COUNT": "1"})
    assert faults.wait(requeued) == 0, faults.last_error(run_dir)
    assert "resuming from" in Path(f"{run_dir}.out").read_text()
    reference = faults.reference_run(out, [])
    assert max(faults.differences(reference, faults.metrics(run_dir)).values()) == 0.0


@pytest.mark.slow
def test_a_non_finite_loss_stops_at_that_step_and_keeps_the_checkpoint(out):
    row = faults.divergence(out, [])  # asserts exit 1, the line, a finite checkpoint
    assert "diverged at step" in row["detail"] and "not finite" in row["detail"]


@pytest.mark.slow
def test_a_diverged_job_of_a_sweep_is_recorded_as_failed(tmp_path):
    sweep = subprocess.run(
        [sys.executable, "-m", "hierot.train", "-m", "debug=tiny", "optimizer.lr=0.1,1e4",
         f"hydra.sweep.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 2, sweep.stderr[-2000:]
    failed = json.loads((tmp_path / "1" / "metrics.json").read_text())
    assert failed["status"] == "diverged" and "diverged at step" in failed["error"]
    assert json.loads((tmp_path / "0" / "metrics.json").read_text())["status"] == "completed"
    assert "1 of 2 jobs failed (job 1: training diverged at step" in sweep.stderr


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_previous_checkpoint_loads(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    row = faults.full_disk(tmp_path, [])
    if row["injected"] == 0:
        pytest.skip(row["detail"])
    assert "no space left" in row["detail"] and f"{RESUME_NAME} of step 2 loads" in row["detail"]


@pytest.mark.slow
def test_runs_started_at_the_same_instant_get_their_own_directories(tmp_path):
    row = faults.simultaneous(tmp_path, [], n=3)  # asserts distinct dirs, own configs
    assert row["injected"] == 3


def test_the_results_table_names_every_column(tmp_path):
    rows = [{"fault": "x", "injected": 1, "detail": "d"}]
    faults.write_page(rows, tmp_path, "python scripts/fault_injection.py")
    table = (tmp_path / "reliability.md").read_text()
    assert "| x | 1 |" in table and "torch " in table
    lines = (tmp_path / "reliability.csv").read_text().splitlines()
    assert lines[0].startswith("# machine: ") and f"{','.join(faults.COLUMNS)}" in lines


def test_logged_step_reads_the_last_training_step(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,8,1.0,\n0,9,0.9,\n0,9,,0.5\n"
    )
    assert faults.logged_step(tmp_path) == 10
    assert faults.checkpoint_step(None) == 0
    torch.save({"global_step": 7}, tmp_path / "c.ckpt")
    assert faults.checkpoint_step(tmp_path / "c.ckpt") == 7


def task_pids(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_a_preempted_submitit_job_requeues_itself_and_resumes_in_its_directory(tmp_path, out):
    """submitit_local runs a job as submitit_slurm does on a node, and requeues it as SLURM
    would when its handler asks: SIGUSR2 (submitit's preemption signal) to the job's task."""
    sweep_dir = tmp_path / "sweep"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "hierot.train", "-m", "hydra/launcher=submitit_local",
         *faults.RUN, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = sweep_dir / "0" / "train.log"
    faults.wait_until(lambda: log.exists() and "data: " in log.read_text(), timeout=300)
    time.sleep(1.0)
    tasks = task_pids(f"submitit.core._submit {sweep_dir}")
    assert len(tasks) == 1, tasks
    os.kill(tasks[0], signal.SIGUSR2)
    _, stderr = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, stderr[-3000:]
    text = log.read_text()  # the job's log, across both of its starts
    assert "SIGUSR2 received" in text and "resuming from" in text
    done = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    assert done["status"] == "completed" and done["steps"] == 3 * 45
    reference = faults.reference_run(out, [])
    assert max(faults.differences(reference, done).values()) == 0.0


@pytest.mark.slow
def test_bad_inputs_fail_in_one_line_before_any_run_directory(tmp_path):
    row = faults.bad_inputs(tmp_path, [])  # asserts exit 2, one line, nothing left behind
    assert row["injected"] == len(faults.BAD_INPUTS)
