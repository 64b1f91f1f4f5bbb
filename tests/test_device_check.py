"""The device-facing scripts: ``scripts/device_check.py`` (CPCC kernels, training speed, host
syncs, data loading as one results CSV) and ``scripts/bench_loop.py`` (hierot's training
step against a bare PyTorch loop). Their helpers on hand-made inputs here; each script's
``--quick`` run as a subprocess in the slow lane."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

import hierot
from hierot.errors import ConfigError, require_integer
from hierot.results import read_results

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(SCRIPTS))  # device_check imports its sibling scripts


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench_loop = load("bench_loop")
device_check = load("device_check")
SECTIONS = {"data", "cpcc", "syncs", "train"}


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_the_steady_rate_counts_the_steps_after_the_warm_up():
    # step ends at 0.5 s (a slow first step), then every 0.1 s: 4 steps in 0.4 s after it
    times = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert bench_loop.steady_rate(times, warmup=1) == pytest.approx(10.0)
    assert bench_loop.steady_rate(times, warmup=3) == pytest.approx(2 / 0.2)
    with pytest.raises(ValueError, match="need more than 5"):
        bench_loop.steady_rate(times, warmup=5)


def test_the_paired_ratio_is_the_student_t_interval_of_the_ratios():
    ratios = [0.95, 0.97, 0.99, 0.96]
    mean, low, high = bench_loop.paired_ratio(ratios)
    sd = math.sqrt(sum((r - 0.9675) ** 2 for r in ratios) / 3)
    half = stats.t.ppf(0.975, 3) * sd / 2
    assert mean == pytest.approx(0.9675)
    assert (low, high) == pytest.approx((0.9675 - half, 0.9675 + half))
    assert bench_loop.paired_ratio([1.02]) == (1.02, 1.02, 1.02)


def test_the_summary_pairs_each_repeat():
    rows = bench_loop.summary_rows({"bare": [4.0, 5.0], "hierot": [3.6, 5.0]}, batch=128)
    assert [r["steps/s median"] for r in rows] == ["4.500", "4.300"]
    assert rows[0]["steps/s min-max"] == "4.000-5.000" and rows[1]["images/s median"] == "550"
    # ratios 0.9 and 1.0: mean 0.95, t(0.975, 1) * 0.0707 / 1.414 = 0.635 either side
    assert rows[1]["hierot / bare (paired mean, 95 % interval)"] == "0.950 [0.315, 1.585]"


def test_compiled_graphs_counts_what_torch_compile_makes():
    before = device_check.compiled_graphs()
    fn = torch.compile(lambda x: torch.sin(x) * 2, backend="eager")
    fn(torch.ones(3))
    assert device_check.compiled_graphs() == before + 1
    fn(torch.ones(3))  # the same graph again
    assert device_check.compiled_graphs() == before + 1


def test_the_offender_is_the_innermost_hierot_frame():
    def outside() -> None:  # a frame outside hierot, below the hierot one
        require_integer(0, "speed.check_every_n_steps", 1)

    try:
        outside()
    except ConfigError as e:
        where = device_check.offender(e)
    assert (
        where.startswith("hierot/errors.py:") and "in require_integer: raise ConfigError(" in where
    )


def test_a_case_that_fails_is_a_row_and_a_failure(capsys):
    check = device_check.Check(torch.device("cpu"), device_check.parse(["--quick"]))

    def broken() -> dict[str, object]:
        raise device_check.CaseFailed("speed.compile=true compiled nothing")

    check.record("train", "x", [("steps/s", "1/s"), ("images/s", "1/s")], broken)
    check.record("train", "y", [("steps/s", "1/s")], None, "bf16-mixed: CUDA only")
    check.record("train", "z", [("steps/s", "1/s")], lambda: {"steps/s": 2.5, "note": "ok"})
    assert [(r["case"], r["value"]) for r in check.rows] == [
        ("x", "failed"), ("x", "failed"), ("y", "unmeasured"), ("z", "2.5")
    ]  # fmt: skip
    assert check.rows[0]["note"] == "CaseFailed: speed.compile=true compiled nothing"
    assert check.rows[2]["note"] == "bf16-mixed: CUDA only" and check.rows[3]["note"] == "ok"
    assert check.failures == ["train / x: CaseFailed: speed.compile=true compiled nothing"]


def test_the_unmeasured_plan_lists_every_row_of_a_cuda_run():
    args = device_check.parse(["--unmeasured"])
    check = device_check.Check(torch.device("cuda"), args, dry=True)
    for section in device_check.SECTIONS.values():
        section(check)
    assert {r["value"] for r in check.rows} == {"unmeasured"}
    distances = hierot.list_distances()
    # data: 2 cases x 2 metrics; cpcc: 3 sizes x 2 metrics; syncs: 4 + 1; train: 8 cases x 4
    assert len(check.rows) == 4 + len(distances) * 3 * 2 + 5 + 8 * 4
    cases = {r["case"] for r in check.rows}
    assert {f"{d} B={b}" for d in distances for b in (128, 512, 2048)} <= cases
    assert "vit_b16 dist=fastft, speed.compile=true, trainer.precision=bf16-mixed" in cases


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # a subprocess that trains: about a minute on 2 cores
def test_the_quick_device_check_measures_every_section_and_distance(tmp_path):
    run = run_script("scripts/device_check.py", "--quick", "--csv", str(tmp_path / "c.csv"))
    assert run.returncode == 0, run.stderr[-3000:]
    meta, columns, rows = read_results(tmp_path / "c.csv")
    assert columns == list(device_check.METRIC_ROW) and "device: CPU" in meta["note"]
    assert "failed" not in {r["value"] for r in rows}
    measured = {r["section"] for r in rows if number(r["value"]) is not None}
    assert measured == SECTIONS
    timed = {
        r["case"].split()[0]
        for r in rows
        if r["section"] == "cpcc" and r["metric"] == "forward+backward" and number(r["value"])
    }
    assert timed == set(hierot.list_distances())
    # on a CPU: peak memory blank, bf16 and the sync debug mode unmeasured
    assert all(r["value"] == "" for r in rows if r["metric"] == "peak allocated")
    bf16 = [r for r in rows if "bf16-mixed" in r["case"]]
    assert bf16 and {r["value"] for r in bf16} == {"unmeasured"}
    by = {(r["case"], r["metric"]): r["value"] for r in rows}
    eager = "resnet18 (default run), speed.compile=false, trainer.precision=32-true"
    assert number(by[(eager, "steps/s")]) > 0 and by[(eager, "compiled graphs")] == "0"
    images = number(by[(eager, "images/s")])
    assert images == pytest.approx(32 * number(by[(eager, "steps/s")]), rel=0.01)
    syncs = "default run, SyncCounter, speed.compile=false"
    assert (
        0
        <= number(by[(syncs, "syncs per step, mean")])
        <= number(by[(syncs, "syncs per step, max")])
    )


@pytest.mark.slow  # three hierot subprocesses and the bare loop
def test_the_quick_loop_benchmark_compares_both_loops(tmp_path):
    run = run_script("scripts/bench_loop.py", "--quick", "--csv", str(tmp_path / "b.csv"))
    assert run.returncode == 0, run.stderr[-3000:]
    _, _, rows = read_results(tmp_path / "b.csv")
    assert [r["repeats"] for r in rows] == ["2", "2"]
    bare, framework = ([float(v) for v in r["per repeat (steps/s)"].split()] for r in rows)
    assert min(bare) > 0 and min(framework) > 0
    ratio = rows[1]["hierot / bare (paired mean, 95 % interval)"]
    mean = float(ratio.split()[0])
    # the per-repeat cells are rounded to 3 decimals
    assert mean == pytest.approx((framework[0] / bare[0] + framework[1] / bare[1]) / 2, rel=0.01)
