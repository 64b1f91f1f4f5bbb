import csv
import json
import subprocess
import sys

import yaml

from hierot.sweep import write_summary

TINY = [
    "trainer.fast_dev_run=true",
    "data.train_per_class=4",
    "data.val_per_class=2",
    "data.test_per_class=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def multirun(tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "hierot.train", "-m", *TINY, *overrides,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def read_rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_sweep_writes_summary_with_a_row_per_job_and_failed_jobs_kept(tmp_path):
    # lam=-1 is refused inside its jobs: the sweep goes on and records them
    run = multirun(tmp_path, "data.batch_size=32,16", "lam=1,-1", "dist=l2")
    assert run.returncode != 0  # Hydra reports the failed jobs at the end
    sweep = tmp_path / "sweep"
    rows = read_rows(sweep / "summary.csv")
    got = [(r["job"], r["data.batch_size"], r["lam"], r["status"]) for r in rows]
    assert got == [
        ("0", "32", "1.0", "completed"),
        ("1", "32", "-1", "failed"),
        ("2", "16", "1.0", "completed"),
        ("3", "16", "-1", "failed"),
    ]
    header = list(rows[0])
    for key in ("dist", "test/cpcc", "test/cpcc_l2", "test/acc_fine", "test/acc_palette",
                "test/acc_shape", "test/mistake_severity", "error"):  # fmt: skip
        assert key in header, key
    assert "trainer.fast_dev_run" not in header  # the same in every job: not a sweep column
    for row in rows:
        if row["status"] == "completed":
            metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
            assert float(row["test/cpcc"]) == metrics["test/cpcc"]
            assert row["error"] == ""
        else:
            assert row["test/cpcc"] == ""
            assert row["error"] == "ConfigError: lam must be a number >= 0, got -1"
    assert (sweep / "summary.png").stat().st_size > 10_000


def test_summary_of_jobs_left_unfinished_or_unreadable(tmp_path):
    for job, metrics in (("0", '{"status": "completed", "test/cpcc": 0.5, "lam": 1.0}'),
                         ("1", None), ("2", '{"test/cpcc": 0.')):  # fmt: skip
        hydra_dir = tmp_path / job / ".hydra"
        hydra_dir.mkdir(parents=True)
        (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump([f"seed={job}"]))
        (hydra_dir / "config.yaml").write_text(yaml.safe_dump({"seed": int(job), "lam": 1.0}))
        if metrics is not None:
            (tmp_path / job / "metrics.json").write_text(metrics)
    (tmp_path / "notes").mkdir()  # not a job directory
    rows = write_summary(tmp_path)
    assert [(r["job"], r["status"], r["seed"]) for r in rows] == [
        ("0", "completed", 0), ("1", "not finished", 1), ("2", "unreadable", 2)]  # fmt: skip
    assert read_rows(tmp_path / "summary.csv")[0]["test/cpcc"] == "0.5"
    assert "metrics.json" in rows[2]["error"]


def test_jobs_in_other_processes_through_a_submitit_launcher(tmp_path):
    # submitit_local runs each job in its own process, as submitit_slurm does on the nodes:
    # the summary comes from the files the jobs wrote.
    run = multirun(tmp_path, "hydra/launcher=submitit_local", "data.batch_size=32", "lam=0.5,2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sweep summary:" in run.stdout and "2 of 2 jobs completed" in run.stdout
    rows = read_rows(tmp_path / "sweep" / "summary.csv")
    assert [(r["lam"], r["status"]) for r in rows] == [("0.5", "completed"), ("2.0", "completed")]
    assert (tmp_path / "sweep" / ".submitit").is_dir()


def test_shipped_slurm_launcher_config(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "hydra/launcher=slurm", "--cfg", "hydra"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    launcher = yaml.safe_load(run.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["timeout_min"] == 240 and launcher["gpus_per_node"] == 1
