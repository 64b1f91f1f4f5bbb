import csv
import json
import subprocess
import sys

import pytest
import yaml

from hierot.figures import MIN_SPAN, summary_figure
from hierot.sweep import write_summary

from helpers.files import write_cifar100

QUICK = [
    "trainer.fast_dev_run=true",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
TINY = ["debug=tiny", "trainer.fast_dev_run=true"]


def multirun(tmp_path, *overrides, base=TINY):
    return subprocess.run(
        [sys.executable, "-m", "hierot.train", "-m", *base, *overrides,
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def read_rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_job(tmp_path):
    run = multirun(tmp_path, "lam=1,-1", "dist=l2")
    assert run.returncode == 2
    assert run.stderr.strip() == "hierot: error: lam must be a number >= 0, got -1"
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_sweep_writes_summary_with_a_row_per_job_and_failed_jobs_kept(tmp_path):
    # The second root's test pickle is corrupt, which only its jobs' setup finds: they fail
    # with one line each, the others complete, and the sweep ends with its summary.
    fine, coarse, parent = ["apple", "pear", "rose", "tulip"], ["fruit", "flowers"], [0, 0, 1, 1]
    good, bad = tmp_path / "good", tmp_path / "bad"
    # Two test images per class, in class order: the one test batch of 8 holds every class
    # (a defined TestCPCC), the batch of 4 only two (undefined).
    write_cifar100(good, fine, coarse, parent, n=2)
    write_cifar100(bad, fine, coarse, parent, n=2)
    (bad / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    run = multirun(tmp_path, "data=cifar100", f"data.root={good},{bad}",
                   "data.batch_size=8,4", "dist=l2", base=QUICK)  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert f"sweep summary: {sweep / 'summary.csv'} (2 of 4 jobs completed)" in run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("hierot: error:")]
    assert len(errors) == 3  # one per failed job, then the sweep's verdict
    assert errors[-1].startswith("hierot: error: 2 of 4 jobs failed (job 2, 3: DataError: ")
    rows = read_rows(sweep / "summary.csv")
    got = [(r["job"], r["data.root"], r["data.batch_size"], r["status"]) for r in rows]
    assert got == [
        ("0", str(good), "8", "completed"),
        ("1", str(good), "4", "completed"),
        ("2", str(bad), "8", "failed"),
        ("3", str(bad), "4", "failed"),
    ]
    header = list(rows[0])
    for key in ("dist", "test/cpcc", "test/cpcc_l2", "test/acc_fine", "test/acc_coarse",
                "test/mistake_severity", "error"):  # fmt: skip
        assert key in header, key
    assert "trainer.fast_dev_run" not in header  # the same in every job: not a sweep column
    for row in rows:
        if row["status"] == "completed":
            metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
            # One fast_dev_run batch may leave the CPCC undefined: null in metrics.json, an
            # empty cell in the summary; accuracy is always a number.
            cpcc = metrics["test/cpcc"]
            assert (cpcc is None) == (row["data.batch_size"] == "4")
            assert row["test/cpcc"] == ("" if cpcc is None else repr(cpcc))
            assert float(row["test/acc_fine"]) == metrics["test/acc_fine"]
            assert row["error"] == ""
        else:
            assert row["test/cpcc"] == ""
            test_file = bad / "cifar-100-python" / "test"
            assert row["error"].startswith(f"DataError: {test_file}: not the official CIFAR-100")
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


@pytest.mark.slow
def test_jobs_in_other_processes_through_a_submitit_launcher(tmp_path):
    # submitit_local runs each job in its own process, as submitit_slurm does on the nodes:
    # the summary comes from the files the jobs wrote.
    run = multirun(tmp_path, "hydra/launcher=submitit_local", "data.batch_size=32", "lam=0.5,2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "sweep summary:" in run.stdout and "2 of 2 jobs completed" in run.stdout
    rows = read_rows(tmp_path / "sweep" / "summary.csv")
    assert [(r["lam"], r["status"]) for r in rows] == [("0.5", "completed"), ("2.0", "completed")]
    assert (tmp_path / "sweep" / ".submitit").is_dir()


@pytest.mark.slow
def test_shipped_slurm_launcher_config(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "hydra/launcher=slurm", "--cfg", "hydra"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    launcher = yaml.safe_load(run.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["timeout_min"] == 240 and launcher["gpus_per_node"] == 1


def test_summary_figure_compares_runs_on_one_scale_and_keeps_lambda_zero():
    rows = [
        {"status": "completed", "lam": lam, "data.batch_size": batch, "dist": dist,
         "seed": seed, "test/cpcc": 0.9 + 0.001 * seed, "test/cpcc_l2": 0.8 + 0.002 * seed}
        for batch in (128, 64) for dist in ("l2", "fastft") for lam in (0, 0.1, 1, 10)
        for seed in (0, 1)
    ]  # fmt: skip
    rows.append({"status": "failed", "lam": 5, "dist": "l2", "error": "x"})
    fig = summary_figure(rows, "sweep x")
    left, right = fig.axes
    assert left.get_ylabel() == "TestCPCC under l2 (test/cpcc_l2)"
    assert right.get_ylabel() == "TestCPCC under the run's distance (test/cpcc)"
    for ax in (left, right):
        assert ax.get_xscale() == "symlog"  # lam = 0 is on the axis
        low, high = ax.get_ylim()
        assert high - low >= MIN_SPAN  # a 0.002 seed spread is not stretched over the plot
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["fastft, batch 64", "l2, batch 64", "fastft, batch 128",
                          "l2, batch 128"]  # fmt: skip
        (line, *_) = ax.lines
        assert list(line.get_xdata()) == [0, 0.1, 1, 10]
    assert left.lines[0].get_ydata()[0] == pytest.approx(0.801)  # mean of the two seeds
    assert fig._suptitle.get_text() == "sweep x: TestCPCC vs lambda (mean of 2 seeds, bars: std)"
    assert summary_figure([{"status": "failed", "lam": 1}]) is None


def test_seed_summary_averages_each_setting_over_the_seeds():
    from hierot.sweep import OVERRIDE, format_seed_summary, seed_summary

    rows = [
        {"job": str(i), "status": "completed", OVERRIDE + "ckpt": ckpt,
         OVERRIDE + "seed": str(seed), OVERRIDE + "shots": str(shots), "seed": seed,
         "transfer/acc_fine": acc}
        for i, (ckpt, seed, shots, acc) in enumerate([
            ("a", 0, 1, 0.5), ("a", 1, 1, 0.7), ("a", 2, 1, 0.9),
            ("b", 0, 1, 0.2), ("b", 1, 1, 0.4), ("a", 0, 5, 1.0),
        ])
    ]  # fmt: skip
    rows.append({"job": "6", "status": "failed", OVERRIDE + "ckpt": "b", OVERRIDE + "seed": "2",
                 OVERRIDE + "shots": "1", "error": "x"})  # fmt: skip
    got = seed_summary(rows)
    assert [(r["ckpt"], r["shots"], r["jobs"]) for r in got] == [
        ("a", "1", 3),
        ("b", "1", 2),
        ("a", "5", 1),
    ]
    assert got[0]["transfer/acc_fine"] == pytest.approx(0.7)
    assert got[0]["transfer/acc_fine_std"] == pytest.approx(0.2)  # sample std of .5, .7, .9
    assert got[2]["transfer/acc_fine_std"] is None  # one seed: no spread
    table = format_seed_summary(got).splitlines()
    assert table[0].split() == ["ckpt", "shots", "jobs", "transfer/acc_fine"]
    assert table[1].split() == ["a", "1", "3", "0.7000", "+-", "0.2000"]
    # evaluate's multiruns average over the checkpoints of one method
    by_method = seed_summary(
        [
            {**r, "objective": "ce", "dist": "l2" if r[OVERRIDE + "ckpt"] == "a" else "none"}
            for r in rows
        ],
        over=("ckpt", "seed"),
    )
    assert [(r["dist"], r["shots"], r["jobs"]) for r in by_method] == [
        ("l2", "1", 3),
        ("none", "1", 2),
        ("l2", "5", 1),
    ]


def test_a_job_on_another_node_writes_only_its_own_directory(tmp_path, monkeypatch):
    """Jobs a cluster launcher runs elsewhere never write the shared summary files; the
    launching process writes them when the sweep ends."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hierot.hydra_callbacks import SweepSummary

    job_dir = tmp_path / "0"
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("- lam=1\n")
    (job_dir / "metrics.json").write_text(json.dumps({"status": "completed", "test/cpcc": 0.5}))
    config = OmegaConf.create(
        {"hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(job_dir)},
                   "sweep": {"dir": str(tmp_path)}}}
    )  # fmt: skip
    callback = SweepSummary()
    callback.on_multirun_start(config)
    done = JobReturn(status=JobStatus.COMPLETED)
    monkeypatch.setattr("os.getpid", lambda: -1)  # as on a node: another process
    callback.on_job_end(config, done)
    assert not (tmp_path / "summary.csv").exists()
    monkeypatch.undo()
    callback.on_job_end(config, done)  # in the launching process (the local launcher)
    assert read_rows(tmp_path / "summary.csv")[0]["test/cpcc"] == "0.5"
