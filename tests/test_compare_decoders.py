"""``scripts/compare_decoders.py``: the decoders' rows read from ``hierot.evaluate``'s keys
and paired with their method's argmax, on tiny fake run directories."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hierot.metrics.features import evaluate_features
from hierot.metrics.node_eval import node_metrics
from hierot.models.module import level_keys
from hierot.sweep import write_csv

from helpers.trees import TREES

spec = importlib.util.spec_from_file_location(
    "compare_decoders", Path(__file__).parents[1] / "scripts" / "compare_decoders.py"
)
decoders = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decoders)


def evaluated(seed: int = 0) -> dict[str, object]:
    """What ``hierot.evaluate decode=[argmax,crm,hie] metrics=[nodes]`` writes of random
    scores on a 12-class tree (its keys: the same functions)."""
    tree = TREES["3 levels"]
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(12).repeat(4)
    logits = torch.randn(48, 12, generator=g) + 2 * torch.eye(12)[y]
    z = torch.randn(48, 4, generator=g)
    ways = ("argmax", "crm", "hie")
    found = evaluate_features(z, logits, y, tree, level_keys(tree), {"l2": {}}, (1, 5),
                              (1, 5, 20), decode=ways)  # fmt: skip
    metrics: dict[str, object] = dict(found)
    nodes, _ = node_metrics(logits, y, tree, curve_points=11)
    metrics.update({f"test/{key}": value for key, value in nodes.items()})
    metrics["test/cpcc"] = metrics["test/cpcc_l2"]
    return metrics


def test_every_row_reads_the_keys_evaluate_writes():
    metrics = evaluated()
    rows = {r["method"]: r for r in decoders.decoder_rows("ce", "0", metrics)}
    assert list(rows) == ["ce", "ce + crm", "ce + hie", "ce + top_down", "ce + majority",
                          "ce + plurality"]  # fmt: skip
    every = {"method", "base", "seed"}
    assert set(rows["ce"]) == every | set(decoders.COLUMNS)
    for way in ("crm", "hie"):
        assert set(rows[f"ce + {way}"]) == every | set(decoders.CLASS_COLUMNS)
        assert float(rows[f"ce + {way}"]["acc_fine"]) == metrics[f"test/{way}/acc_top1"]
    for rule in ("top_down", "majority", "plurality"):
        assert set(rows[f"ce + {rule}"]) == every | set(decoders.NODE_COLUMNS)
    # argmax's row: its own accuracy and severity, and the leaf rule, the same prediction
    assert float(rows["ce"]["acc_fine"]) == metrics["test/acc_fine"]
    assert float(rows["ce"]["exact"]) == pytest.approx(metrics["test/acc_fine"])
    # the aliases mistake_severity and ahd@k, computed in float32
    assert float(rows["ce"]["mistake_severity"]) == pytest.approx(metrics["test/mistake_severity"])
    assert float(rows["ce"]["ahd@5"]) == pytest.approx(metrics["test/ahd@5"])


def fake_sweep(tmp_path: Path, values: dict[str, list[float]]) -> Path:
    """A ``compare_methods.py`` sweep of ce over seeds 0-2 whose jobs were evaluated:
    ``values[key]`` the ``metrics.json`` value of ``key`` for each seed."""
    sweep = tmp_path / "ce"
    rows = []
    for seed in range(3):
        rows.append({"job": str(seed), "status": "completed", "override:seed": str(seed),
                     "objective": "ce", "dist": "none", "seed": seed})  # fmt: skip
        (sweep / str(seed) / "decoders").mkdir(parents=True)
        metrics = {key: v[seed] for key, v in values.items()}
        (sweep / str(seed) / "decoders" / "metrics.json").write_text(json.dumps(metrics))
    rows.append({"job": "3", "status": "failed", "override:seed": "3", "objective": "ce",
                 "dist": "none", "seed": 3})  # fmt: skip
    write_csv(sweep / "summary.csv", rows)
    return sweep / "summary.csv"


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_each_decoder_is_paired_with_its_methods_argmax(tmp_path):
    summary = fake_sweep(tmp_path, {
        "test/acc_top1": [0.90, 0.92, 0.94], "test/crm/acc_top1": [0.89, 0.92, 0.92],
        "test/severity_path": [3.0, 3.2, 3.4], "test/crm/severity_path": [2.5, 2.9, 3.0],
        "test/nodes/leaf/correct": [0.90, 0.92, 0.94],
        "test/nodes/majority/correct": [0.95, 0.96, 0.99],
        "test/cpcc": [0.3, 0.4, 0.5],
    })  # fmt: skip
    rows, cpcc = decoders.read_runs([summary])
    assert cpcc == {"ce": [0.3, 0.4, 0.5]}  # the failed job is not read
    means = decoders.means_table(rows).splitlines()
    assert cells(means[0])[:5] == ["method", "runs", "acc_fine", "mistake_severity", "ahd@5"]
    column = {name: i for i, name in enumerate(cells(means[0]))}
    by_label = {cells(line)[0]: cells(line) for line in means[2:]}
    assert by_label["ce (argmax)"][column["acc_fine"]] == "0.920 ± 0.020"
    assert by_label["ce (argmax)"][column["correct"]] == "0.920 ± 0.020"  # the leaf rule
    assert by_label["ce + crm"][column["mistake_severity"]] == "2.800 ± 0.265"
    assert by_label["ce + crm"][column["correct"]] == "—"  # not reported for crm
    assert by_label["ce + majority"][column["acc_fine"]] == "—"  # no class ranking
    assert "ce + hie" not in by_label  # no hie key in these jobs
    paired = decoders.paired_table(rows).splitlines()
    header = cells(paired[0])
    assert header[:2] == ["method - argmax", "seeds"]
    lines = {cells(line)[0]: cells(line) for line in paired[2:]}
    assert set(lines) == {"ce + crm", "ce + majority"}
    crm = lines["ce + crm"]
    assert crm[1] == "3"
    # crm - argmax: -0.01, 0, -0.02 accuracy; -0.5, -0.3, -0.4 severity (by hand: mean -0.4,
    # sd 0.1, half-width t(0.975, 2) 4.302653 x 0.1 / sqrt(3) = 0.248)
    assert crm[header.index("mistake_severity")] == "-0.400 [-0.648, -0.152] p=0.02 *"
    assert crm[header.index("acc_fine")].startswith("-0.010 [-0.035, +0.015]")
    assert not crm[header.index("acc_fine")].endswith("*")
    assert crm[header.index("correct")] == "—"
    majority = lines["ce + majority"]
    assert majority[header.index("correct")].startswith("+0.047 [")
    assert decoders.cpcc_note(cpcc).endswith("features): ce 0.400 ± 0.100.")


def test_only_completed_unevaluated_jobs_are_evaluated(tmp_path, monkeypatch):
    summary = fake_sweep(tmp_path, {"test/acc_top1": [0.9, 0.9, 0.9]})
    job = summary.parent / "0"
    (job / "decoders" / "metrics.json").unlink()
    (job / "metrics.json").write_text(json.dumps({"best_checkpoint": "run/best.ckpt"}))
    ran = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: ran.append(command))
    decoders.evaluate_jobs(summary, decoders.methods.read_rows(summary), ["crm_cost=path"])
    assert ran == [[sys.executable, "-m", "hierot.evaluate", "ckpt=run/best.ckpt",
                    "decode=[argmax,crm,hie]", "metrics=[nodes]", "figures=false",
                    f"hydra.run.dir={job / 'decoders'}", "crm_cost=path"]]  # fmt: skip
