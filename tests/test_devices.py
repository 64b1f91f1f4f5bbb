"""The same run on any number of devices: ``data.batch_size`` is the global batch. Real DDP
processes on CPU (gloo): Lightning's own launcher on one machine, and two processes with the
environment ``srun`` gives two nodes of one task each, as a SLURM cluster starts them."""

import importlib.util
import signal
import socket
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "fault_injection.py"
spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)

DDP_CPU = ["trainer.strategy=ddp", "trainer.accelerator=cpu"]
# Whole default runs on one and two processes: scripts/ddp_agreement.py (minutes).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What ``srun`` sets for task ``rank`` of a job of ``world`` nodes, one task each."""
    return {
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NAME": "hierot",
        "SLURM_NTASKS": str(world),
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": str(world),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(rank),
        "SLURM_NODELIST": "localhost",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }


def srun(run_dir: Path, *overrides: str) -> list[subprocess.Popen]:
    port = free_port()
    args = [*faults.RUN, "trainer.num_nodes=2", "trainer.devices=1", *DDP_CPU, *overrides]
    return [faults.start(run_dir, *args, env=srun_env(rank, 2, port)) for rank in range(2)]


@pytest.mark.slow
def test_two_slurm_nodes_train_as_one_stop_together_and_resume(tmp_path):
    run_dir = tmp_path / "job"
    ranks = srun(run_dir)
    faults.wait_until(faults.training_started(run_dir), timeout=300)
    faults.wait_until(lambda: faults.logged_step(run_dir) >= 5, timeout=300)
    ranks[1].send_signal(signal.SIGTERM)  # one rank only: both stop at the same step
    codes = [faults.wait(p, 300) for p in ranks]
    assert codes == [128 + signal.SIGTERM] * 2, faults.last_error(run_dir)
    stopped = faults.metrics(run_dir)
    assert stopped["status"] == "interrupted"
    assert faults.checkpoint_step(faults.latest_checkpoint(run_dir)) == stopped["steps"]

    resumed = srun(run_dir, "ckpt_path=auto")
    assert [faults.wait(p, 600) for p in resumed] == [0, 0], faults.last_error(run_dir)
    done = faults.metrics(run_dir)
    assert done["status"] == "completed" and done["steps"] == 3 * 45  # one process's steps
    # rank 0 alone wrote the run's files; rank 1 only its own log
    names = {p.name for p in run_dir.iterdir()}
    assert names == {
        ".hydra", "checkpoints", "logs", "config.yaml", "data.json", "hierarchy.json",
        "metrics.json", "train.log", "train_rank1.log",
    }  # fmt: skip
