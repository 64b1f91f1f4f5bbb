"""``hierot.evaluate``'s printed report: every key of ``metrics.json`` in a short table per
family (``hierot.report.format_report``). The end-to-end check (``evaluate.log`` of a run
with ``metrics=all ood=synthetic_ood``) is in ``tests/test_evaluate.py``."""

import math

import torch

from hierot.metrics.features import EXTRA_FAMILIES, evaluate_features, feature_space_metrics
from hierot.metrics.node_eval import node_metrics
from hierot.metrics.ood import ood_metrics
from hierot.models.module import level_keys
from hierot.report import format_report, shown

from helpers.reports import read_report
from helpers.trees import TREES


def evaluation_metrics() -> dict[str, object]:
    """What ``hierot.evaluate`` reports with ``metrics=all ood=...``, on random features of a
    12-class tree: the default families, every extra family, OOD and the run's record, one
    CPCC undefined."""
    tree = TREES["3 levels"]
    g = torch.Generator().manual_seed(0)
    y = torch.arange(12).repeat(4)
    z = torch.randn(48, 6, generator=g) + y[:, None].float()
    logits = torch.randn(48, 12, generator=g)
    train = (torch.randn(96, 6, generator=g) + y.repeat(2)[:, None].float(), y.repeat(2))
    names = level_keys(tree)
    metrics: dict[str, object] = dict(
        evaluate_features(z, logits, y, tree, names, {"l2": {}, "fastft": {}}, (1, 5), (1, 5))
    )
    metrics.update(feature_space_metrics(z, y, tree, names, EXTRA_FAMILIES, train, knn_k=3))
    nodes, _ = node_metrics(logits, y, tree, curve_points=11)
    metrics.update({f"test/{key}": value for key, value in nodes.items()})
    outside = torch.randn(20, 6, generator=g) * 3
    scores = ood_metrics(train[0], train[1], z, outside, [3])
    metrics.update({f"ood/{key}": float(value) for key, value in scores.items()})
    metrics.update({"ood_set": "synthetic_ood", "ood_samples": 20, "test/cpcc": math.nan})
    metrics.update({"checkpoint": "run/checkpoints/last.ckpt", "objective": "ce",
                    "dist": "fastft", "lam": None, "seed": 0, "test_samples": 48})  # fmt: skip
    return metrics


def test_every_key_is_printed_once_under_its_family():
    metrics = evaluation_metrics()
    # 100, and acc_path, acc_path_marginal, hops, hops@1, hops@5 (and crm/hops ...), and
    # 4 node rules x 11 scores and 3 areas of the operating curve
    assert len(metrics) == 108 + 47 and sum(k.startswith("ood/") for k in metrics) == 24
    report = format_report(metrics)
    printed = read_report(report)
    assert set(printed) == set(metrics)  # every key, nothing else
    for key, value in metrics.items():
        assert printed[key][1] == shown(value), key  # 4 decimals, NaN and None as n/a
    assert printed["test/cpcc"] == ("CPCC", "n/a") and printed["lam"] == ("run", "n/a")
    families = {key: family for key, (family, _) in printed.items()}
    expected = {
        "checkpoint": "run", "ood_set": "run", "test/cpcc_fastft": "CPCC",
        "test/acc_fine": "accuracy", "test/acc_level1_marginal": "accuracy",
        "test/crm/acc_top5": "accuracy", "test/map_level2": "retrieval mAP",
        "test/mistake_severity": "mistakes", "test/ahd@5": "mistakes",
        "test/crm/hprec_path@5": "mistakes", "test/ece": "calibration",
        "test/acc_path": "accuracy", "test/hops@5": "mistakes", "test/crm/hops": "mistakes",
        "test/mce": "calibration", "test/silhouette_level1": "silhouette",
        "test/knn_acc@3": "kNN", "test/proto_recall_fine": "prototype retrieval",
        "ood/gaussian_raw/auroc": "OOD detection", "ood/knn@3_norm/fpr95": "OOD detection",
        "test/nodes/plurality/hf0.5": "node predictions",
        "test/nodes/curve/ac_info": "node predictions",
    }  # fmt: skip
    assert {key: families[key] for key in expected} == expected
    titles = [table.splitlines()[0].split("  ")[0] for table in report.split("\n\n")]
    assert titles == ["run", "CPCC", "accuracy", "retrieval mAP", "mistakes", "calibration",
                      "silhouette", "prototype retrieval", "kNN", "node predictions",
                      "OOD detection"]  # fmt: skip
    # node predictions: one row per rule and one for the curve, one column per score
    (nodes,) = [t for t in report.split("\n\n") if t.startswith("node predictions")]
    assert nodes.splitlines()[0].split()[2:5] == ["correct", "exact", "hprec"]
    assert len(nodes.splitlines()) == 2 + 5
    # OOD is one row per score and features, one column per number: 8 rows, not 24
    (ood,) = [t for t in report.split("\n\n") if t.startswith("OOD detection")]
    assert ood.splitlines()[0].split() == ["OOD", "detection", "auroc", "aupr", "fpr95"]
    assert len(ood.splitlines()) == 2 + 8


def test_a_new_metric_gets_a_table_of_its_own():
    report = format_report({"test/acc_fine": 0.5, "test/zeta_fine": 0.25, "test/zeta_x": 1})
    assert report == (
        "accuracy        value\n"
        "--------------  ------\n"
        "test/acc_fine   0.5000\n"
        "\n"
        "zeta            value\n"
        "--------------  ------\n"
        "test/zeta_fine  0.2500\n"
        "test/zeta_x     1"
    )
