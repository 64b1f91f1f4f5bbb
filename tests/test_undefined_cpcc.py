"""An undefined CPCC is reported as undefined: NaN in a run (null in ``metrics.json``),
``n/a`` in the printed tables, why once in the log; model selection and early stopping skip
an epoch whose monitored CPCC is undefined. Training's ``CPCCLoss`` is untouched (0, zero
gradient: ``tests/test_cpcc.py``)."""

import json
import logging
import math
import shutil
from functools import partial

import lightning as L
import pytest
import torch

from hierot.correlation import CPCCLoss, cpcc, reported_cpcc, undefined_lines
from hierot.metrics import SplitCPCC
from hierot.models import HierarchyModule
from hierot.report import format_table, write_metrics
from hierot.stages import StageCheckpoint, StageEarlyStopping

from helpers.trees import TREES

TREE = TREES["3 levels"]  # 12 classes; 0, 1, 2 are siblings
NEEDS = "(a CPCC needs 3 classes or more whose distances are not all equal)"


def features(y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(y), 6, generator=g) + 2.0 * y[:, None].float()


@pytest.mark.parametrize(
    ("y", "method", "why"),
    [
        (torch.tensor([0, 0, 5, 5, 5]), "l2", "2 classes"),
        (torch.tensor([4, 4, 4]), "fastft", "1 class"),
        (torch.tensor([0, 1, 2, 0, 1, 2]), "l2", "3 classes whose tree distances are all equal"),
    ],
)  # fmt: skip
def test_an_undefined_cpcc_is_nan_with_why(y, method, why):
    t = TREE.tree_distances()
    z = features(y)
    value, reason = reported_cpcc(z, y, t, method)
    assert math.isnan(value.item()) and reason == why
    assert cpcc(z, y, t, method).item() == 0.0  # what training uses: 0, unchanged
    z.requires_grad_()
    loss = CPCCLoss(TREE, method)(z, y)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros_like(z))


def test_constant_class_distances_name_the_distance_and_a_defined_cpcc_is_unchanged():
    t = TREE.tree_distances()
    y = torch.arange(12).repeat(2)
    same = torch.ones(24, 6)  # every class the same point
    value, why = reported_cpcc(same, y, t, "emd")
    assert math.isnan(value.item()) and why == "12 classes whose emd distances are all equal"
    z = features(y)
    for method in ("l2", "fastft", "sinkhorn"):
        value, why = reported_cpcc(z, y, t, method)
        assert why is None and value.dtype == torch.float32
        assert value.item() == cpcc(z, y, t, method).item()  # bit for bit
        assert value.item() > 0.5


def test_split_cpcc_of_two_classes_is_nan_and_says_why():
    t = TREE.tree_distances()
    metric = SplitCPCC(t, {"cpcc": ("fastft", {}), "cpcc_l2": ("l2", {})})
    y = torch.tensor([3, 3, 3, 7, 7, 7])
    metric.update(features(y), y)
    out = metric.compute()
    assert math.isnan(out["cpcc"].item()) and math.isnan(out["cpcc_l2"].item())
    assert metric.undefined == {"cpcc": "2 classes", "cpcc_l2": "2 classes"}
    assert metric.evaluated == 6
    assert undefined_lines({f"test/{k}": v for k, v in metric.undefined.items()}, "test", 6) == [
        f"test/cpcc, test/cpcc_l2 undefined: 6 test samples evaluated, of 2 classes {NEEDS}; "
        "shown as n/a, null in metrics.json"
    ]
    metric.reset()
    y = torch.arange(12).repeat(2)
    metric.update(features(y), y)
    out = metric.compute()
    assert metric.undefined == {} and out["cpcc_l2"].item() == cpcc(features(y), y, t).item()


README_TABLE = """\
metric                 value
---------------------  ------
test/acc_fine          0.9329
test/acc_palette       1.0000
test/acc_shape         0.9454
test/acc_top5          1.0000
test/cpcc              0.9367
test/cpcc_l2           0.9345
test/loss              0.1927
test/mistake_severity  3.6273"""


def test_the_final_table_shows_undefined_as_na_and_json_as_null(tmp_path):
    numbers = {"test/acc_fine": 0.9329, "test/acc_palette": 1.0, "test/acc_shape": 0.9454,
               "test/acc_top5": 1.0, "test/cpcc": 0.9367, "test/cpcc_l2": 0.9345,
               "test/loss": 0.1927, "test/mistake_severity": 3.6273}  # fmt: skip
    assert format_table({**numbers, "status": "completed", "val/cpcc": 0.5}) == README_TABLE
    undefined = {**numbers, "test/cpcc": torch.tensor(float("nan")), "test/cpcc_l2": math.nan}
    table = format_table(undefined).splitlines()
    assert "test/cpcc              n/a" in table and "test/cpcc_l2           n/a" in table
    write_metrics(tmp_path / "metrics.json", undefined)
    text = (tmp_path / "metrics.json").read_text()
    assert '"test/cpcc": null' in text and "NaN" not in text  # strict JSON
    assert json.loads(text)["test/acc_fine"] == 0.9329


def test_sweep_summary_and_figure_skip_an_undefined_cpcc(tmp_path):
    from hierot.figures import summary_figure
    from hierot.sweep import format_seed_summary, seed_summary

    rows = [
        {"job": str(i), "status": "completed", "dist": "l2", "lam": lam, "seed": seed,
         "data.batch_size": 8, "test/cpcc": cpcc_value, "test/acc_fine": 0.5}
        for i, (lam, seed, cpcc_value) in enumerate(
            [(0.0, 0, None), (0.0, 1, None), (1.0, 0, 0.8), (1.0, 1, None)]
        )
    ]  # fmt: skip
    summary = seed_summary(rows)
    by_lam = {row["lam"]: row for row in summary}
    assert "test/cpcc" not in by_lam["0.0"]  # no defined value: no mean
    assert by_lam["1.0"]["test/cpcc"] == 0.8 and by_lam["1.0"]["test/cpcc_std"] is None
    table = format_seed_summary(summary).splitlines()
    assert table[0].split()[:5] == ["dist", "lam", "data.batch_size", "jobs", "test/cpcc"]
    assert table[1].split()[4] == "n/a" and table[2].split()[4] == "0.8000"
    figure = summary_figure(rows)
    assert figure is not None  # the defined point alone
    assert [len(line.get_xdata()) for line in figure.axes[0].get_lines()] == [1]


# ---- a run whose val/cpcc is undefined, monitored by the checkpoint and early stopping


def loader(classes: list[int], n: int = 24) -> torch.utils.data.DataLoader:
    y = torch.tensor(classes).repeat(n // len(classes))
    x = torch.randn(len(y), 1, 1, 5, generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=12)


def tiny_model() -> HierarchyModule:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 4))
    backbone.num_features = 4
    return HierarchyModule(backbone, TREE, partial(torch.optim.SGD, lr=0.1), dist="l2")


def test_an_undefined_monitor_is_skipped_and_its_reason_logged_once(tmp_path, caplog):
    checkpoint = StageCheckpoint(dirpath=tmp_path, monitor="val/cpcc", mode="max", save_top_k=1)
    stop = StageEarlyStopping(monitor="val/cpcc", mode="max", patience=0)  # check_finite
    trainer = L.Trainer(max_epochs=3, callbacks=[checkpoint, stop], logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)  # fmt: skip
    model = tiny_model()
    with caplog.at_level(logging.WARNING):
        trainer.fit(model, loader(list(range(12))), loader([0, 6]))  # val: 2 classes
        assert math.isnan(trainer.callback_metrics["val/cpcc"].item())
        assert model.undefined == {"val/cpcc": "2 classes", "val/cpcc_l2": "2 classes"}
        (tested,) = trainer.test(model, loader([1, 2]), verbose=False)
    assert trainer.current_epoch == 3 and not stop.stopped_epoch  # not stopped by NaN
    assert checkpoint.best_model_path == ""  # no epoch chosen by an undefined value
    assert math.isnan(tested["test/cpcc"]) and tested["test/acc_fine"] >= 0
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines.count(
            f"val/cpcc, val/cpcc_l2 undefined: 24 val samples evaluated, of 2 classes {NEEDS}; "
            "shown as n/a, null in metrics.json"
        )
        == 1
    )  # three validations, one line
    assert sum("test/cpcc, test/cpcc_l2 undefined: 24 test samples" in m for m in lines) == 1
    assert (
        lines.count(
            "val/cpcc was undefined at every validation: no best checkpoint, the test uses the "
            "last weights (monitor a metric that is defined, e.g. monitor=val/acc_fine)"
        )
        == 1
    )
    assert lines.count("early stopping skipped 3 validation(s) where val/cpcc was undefined") == 1


@pytest.mark.slow
def test_a_debug_run_on_a_folder_reports_its_undefined_cpcc(tmp_path, caplog):
    """What a user met: ``debug=fast`` on their own folder tests one batch; here it holds 2
    of the 4 classes (the folder's first two, in order)."""
    from hierot.config import compose_config
    from hierot.evaluate import evaluate
    from hierot.train import train

    from helpers.files import write_folders
    from helpers.reports import read_report

    write_folders(tmp_path / "data", {s: ["cat", "dog", "car", "bus"] for s in ("train", "test")})
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"animal": ["cat", "dog"], "vehicle": ["car", "bus"]}))
    out = tmp_path / "run"
    cfg = compose_config(["debug=fast", "data=imagefolder", f"data.root={tmp_path / 'data'}",
                          f"data.hierarchy={tree}", "data.image_size=16", "data.batch_size=6",
                          f"output_dir={out}"])  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert math.isnan(train(cfg))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test/cpcc"] is None and metrics["test/cpcc_l2"] is None
    assert 0 <= metrics["test/acc_fine"] <= 1  # the rest is reported as before
    lines = [r.getMessage() for r in caplog.records]
    assert (
        lines.count(
            f"test/cpcc, test/cpcc_l2 undefined: 6 test samples evaluated, of 2 classes {NEEDS}; "
            "shown as n/a, null in metrics.json"
        )
        == 1
    )
    (table,) = [m for m in lines if m.startswith("metric ")]
    assert "test/cpcc              n/a" in table.splitlines()
    assert "test/cpcc_l2           n/a" in table.splitlines()
    assert "0.0000" not in "".join(r for r in table.splitlines() if "cpcc" in r)
    # evaluate on a test folder of 2 of the classes: every distance's CPCC, one line
    for name in ("dog", "bus"):
        shutil.rmtree(tmp_path / "data" / "test" / name)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        evaluated = evaluate(compose_config(
            [f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "data=imagefolder",
             f"data.root={tmp_path / 'data'}", f"data.hierarchy={tree}", "data.image_size=16",
             f"output_dir={tmp_path / 'eval'}", "enable_progress_bar=false"],
            config_name="evaluate",
        ))  # fmt: skip
    keys = ["test/cpcc"] + [
        f"test/cpcc_{d}" for d in ("l2", "l1", "emd", "sinkhorn", "swd", "fastft")
    ]
    assert all(math.isnan(evaluated[k]) for k in keys)
    lines = [r.getMessage() for r in caplog.records]
    assert [m for m in lines if "undefined" in m] == [
        f"{', '.join(keys)} undefined: 6 test samples evaluated, of 2 classes {NEEDS}; "
        "shown as n/a, null in metrics.json"
    ]
    (report,) = [m for m in lines if m.startswith("every metric of metrics.json")]
    assert {key: cell for key, (_, cell) in read_report(report.split("\n\n", 1)[1]).items()
            if "cpcc" in key} == dict.fromkeys(keys, "n/a")  # fmt: skip
