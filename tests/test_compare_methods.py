import importlib.util
from datetime import datetime
from pathlib import Path

import pytest

from hierot.sweep import OVERRIDE, write_csv

spec = importlib.util.spec_from_file_location(
    "compare_methods", Path(__file__).parents[1] / "scripts" / "compare_methods.py"
)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def sweep_rows(lams=(1.0,), seeds=(0, 1)):
    rows = []
    for job, (dist, lam, seed) in enumerate(
        (d, lam, s) for d in ("fastft", "none") for lam in lams for s in seeds
    ):
        row = {"job": str(job), "status": "completed", OVERRIDE + "dist": dist,
               OVERRIDE + "seed": str(seed), "dist": dist, "lam": lam, "data.batch_size": 128,
               "seed": seed, "backbone": "resnet18",
               "test/cpcc": 0.5 + lam / 10 + seed / 100, "test/cpcc_l2": 0.4,
               "test/acc_fine": 0.9, "test/mistake_severity": 2.0}  # fmt: skip
        if len(lams) > 1:
            row[OVERRIDE + "lam"] = str(lam)
        rows.append(row)
    return rows


def tabulate(tmp_path, rows):
    write_csv(tmp_path / "summary.csv", rows)
    return compare.table(compare.read_rows(tmp_path / "summary.csv")).splitlines()


def test_rows_pool_seeds_only(tmp_path):
    lines = tabulate(tmp_path, sweep_rows(lams=(0.1, 1.0)))
    assert lines[0].startswith("| method | lam | runs | cpcc | cpcc_l2 | acc_fine |")
    # every (method, lam) is its own row; the two seeds of each are pooled
    assert [line.split(" | ")[:4] for line in lines[2:]] == [
        ["| flat (CE only)", "0.1", "2", "0.515 ± 0.007"],
        ["| flat (CE only)", "1.0", "2", "0.605 ± 0.007"],
        ["| fastft", "0.1", "2", "0.515 ± 0.007"],
        ["| fastft", "1.0", "2", "0.605 ± 0.007"],
    ]
    plain = tabulate(tmp_path, sweep_rows())
    assert plain[0].startswith("| method | runs | cpcc |")
    assert plain[2].startswith("| flat (CE only) | 2 | 0.605 ± 0.007 |")


def test_every_call_gets_a_fresh_sweep_directory(tmp_path):
    now = datetime(2026, 11, 23, 10, 0, 0)
    assert compare.fresh_out(None, now) == Path("multirun/compare_methods/2026-11-23_10-00-00")
    assert compare.fresh_out(tmp_path / "new", now) == tmp_path / "new"
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "0").mkdir()
    with pytest.raises(SystemExit, match="is not empty"):
        compare.fresh_out(tmp_path / "used", now)


@pytest.mark.slow
def test_transfer_column_after_a_source_sweep(tmp_path):
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "scripts" / "compare_methods.py"
    tiny = ["debug=tiny"]
    run = subprocess.run(
        [sys.executable, str(script), "--methods", "l2", "fastft", "--seeds", "0", "--transfer",
         "--out", str(tmp_path / "sweep"), "--", *tiny],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    column = header.index("transfer/acc_fine")
    assert header[column:] == ["transfer/acc_fine", "transfer/acc_top5"]
    assert len(lines) == 4  # header, rule, l2, fastft
    for line in lines[2:]:
        assert 0 <= float(line.strip("|").split("|")[column]) <= 1
    for job in ("0", "1"):
        config = (tmp_path / "sweep" / job / "config.yaml").read_text()
        assert "split: source" in config
        assert (tmp_path / "sweep" / job / "transfer" / "metrics.json").is_file()
