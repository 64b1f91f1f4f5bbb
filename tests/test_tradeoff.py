"""The trade-off figure (``hierot.tradeoff``): top-1 error against mistake severity and
``ahd@k``, one point per run, a colour per method, from a sweep's rows."""

import json

import numpy as np
import pytest

from hierot.sweep import write_summary
from hierot.tradeoff import tradeoff_figure, tradeoff_panels, tradeoff_points


def training_rows():
    """Two objectives x three seeds, a failed job and a job without a severity."""
    rows = [
        {"status": "completed", "override:objective": objective, "override:seed": str(seed),
         "objective": objective, "seed": seed, "test/acc_fine": acc + 0.01 * seed,
         "test/mistake_severity": severity - 0.1 * seed}
        for objective, acc, severity in (("ce", 0.80, 3.0), ("hxe", 0.75, 2.5))
        for seed in range(3)
    ]  # fmt: skip
    rows.append({"status": "failed", "override:objective": "ce", "override:seed": "9"})
    rows.append({"status": "completed", "override:objective": "ce", "override:seed": "7",
                 "test/acc_fine": 0.5})  # fmt: skip
    return rows


def test_each_run_is_a_point_at_its_error_and_severity_coloured_by_method():
    points = tradeoff_points(training_rows(), "test/mistake_severity")
    assert sorted(points) == ["objective=ce", "objective=hxe"]  # the seed is not a method
    np.testing.assert_allclose(points["objective=ce"], [[0.20, 3.0], [0.19, 2.9], [0.18, 2.8]])
    np.testing.assert_allclose(points["objective=hxe"], [[0.25, 2.5], [0.24, 2.4], [0.23, 2.3]])

    fig = tradeoff_figure(training_rows(), "sweep s")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "top-1 error (1 - test/acc_fine)"
    assert ax.get_ylabel().startswith("mistake severity")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["objective=ce (3)", "objective=hxe (3)"]
    ce, hxe = ax.collections
    np.testing.assert_allclose(ce.get_offsets(), points["objective=ce"])
    assert not np.allclose(ce.get_facecolor(), hxe.get_facecolor())
    assert fig._suptitle.get_text().startswith("sweep s: top-1 error vs mistake severity")


def test_an_evaluate_sweep_adds_a_panel_per_ahd_k_in_k_order():
    rows = [
        {"status": "completed", "override:ckpt": f"{i}.ckpt", "objective": "ce", "dist": "l2",
         "lam": 1.0, "test/acc_fine": 0.7, "test/mistake_severity": 2.0,
         "test/ahd@20": 3.0, "test/ahd@5": 1.5, "test/ahd@1": 0.6}
        for i in range(2)
    ]  # fmt: skip
    assert [key for key, _ in tradeoff_panels(rows)] == [
        "test/mistake_severity", "test/ahd@1", "test/ahd@5", "test/ahd@20"
    ]  # fmt: skip
    # the checkpoints are runs of one method, named by its settings
    assert list(tradeoff_points(rows, "test/ahd@5")) == ["objective=ce dist=l2 lam=1.0"]
    assert len(tradeoff_figure(rows).axes) == 4


def test_nothing_to_plot_without_a_completed_run_with_accuracy_and_severity():
    assert tradeoff_figure([{"status": "failed"}]) is None
    assert tradeoff_figure([{"status": "completed", "test/acc_fine": 0.5}]) is None
    assert tradeoff_figure([{"status": "completed", "test/mistake_severity": None,
                             "test/acc_fine": 0.5}]) is None  # fmt: skip


def job(sweep, number: int, overrides: list[str], metrics: dict) -> None:
    hydra = sweep / str(number) / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (sweep / str(number) / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("severity", [True, False])
def test_the_sweep_summary_writes_tradeoff_png_when_there_is_a_severity(tmp_path, severity):
    for i, seed in enumerate((0, 1)):
        metrics = {"test/acc_fine": 0.6 + 0.1 * seed, "test/cpcc": 0.5}
        if severity:
            metrics["test/mistake_severity"] = 2.0 + seed
        job(tmp_path, i, [f"seed={seed}"], metrics)
    write_summary(tmp_path)
    figure = tmp_path / "tradeoff.png"
    assert figure.exists() == severity
    if severity:
        assert figure.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*.tmp.png"))
