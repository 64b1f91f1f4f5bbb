import json
import shutil
import subprocess
import sys

import pytest
import torch

from hierot.config import compose_config
from hierot.errors import ConfigError
from hierot.evaluate import precheck
from hierot.figures import embedding_2d
from hierot.metrics import average_hierarchical_distance, retrieval_map
from hierot.metrics.node_scores import NODE_METRICS
from hierot.report import shown
from hierot.train import train

from helpers.reports import read_report

TINY = ["debug=tiny", "data.test_per_class=3", "trainer.limit_train_batches=2"]


def reference_map(z, labels):
    """Leave-one-out retrieval mAP, one query at a time in plain Python."""
    aps = []
    for q in range(len(z)):
        others = [i for i in range(len(z)) if i != q]
        others.sort(key=lambda i: float((z[i] - z[q]).norm()))
        relevant = [labels[i] == labels[q] for i in others]
        if not any(relevant):
            continue
        hits, precisions = 0, []
        for rank, rel in enumerate(relevant, start=1):
            if rel:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def test_retrieval_map_matches_a_per_query_loop():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (37,), generator=g)
    z = torch.randn(37, 4, generator=g, dtype=torch.float64) + labels[:, None].double()
    labels[0] = 9  # a query with nothing relevant is left out
    got = float(retrieval_map(z, labels, chunk=8))  # several query blocks
    assert got == pytest.approx(reference_map(z, labels.tolist()), abs=1e-6)
    assert 0.3 < got < 1.0


def test_retrieval_map_of_separated_classes_is_one():
    z = torch.tensor([[0.0], [0.1], [5.0], [5.1], [5.2]])
    assert float(retrieval_map(z, torch.tensor([0, 0, 1, 1, 1]))) == pytest.approx(1.0)
    z = torch.tensor([[0.0], [3.0], [2.0]])
    # query 0: ranks 2.0 (label 1, irrelevant) then 3.0 (label 0): AP = 1/2
    # query 3.0: ranks 2.0 (irrelevant) then 0.0: AP = 1/2; query 2.0: nothing relevant
    assert float(retrieval_map(z, torch.tensor([0, 0, 1]))) == pytest.approx(0.5)


def test_average_hierarchical_distance_by_hand():
    tree = torch.tensor([[0.0, 2, 4], [2, 0, 4], [4, 4, 0]])
    logits = torch.tensor([[3.0, 2, 1], [1.0, 2, 3]])
    target = torch.tensor([0, 1])
    # top-1: class 0 (right, 0) and class 2 (t(1, 2) = 4)
    assert float(average_hierarchical_distance(logits, target, tree, 1)) == 2.0
    # top-2: {0, 1} -> 0, 2 and {2, 1} -> 4, 0: mean 6 / 4
    assert float(average_hierarchical_distance(logits, target, tree, 2)) == 1.5


def test_embedding_is_the_two_leading_principal_components():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(200, 5, generator=g) * torch.tensor([10.0, 0.1, 3.0, 0.1, 0.1])
    xy = embedding_2d(z)
    assert xy.shape == (200, 2)
    # the spread along the embedding axes is that of dimensions 0 and 2
    assert float(xy[:, 0].std()) == pytest.approx(float(z[:, 0].std()), rel=0.05)
    assert float(xy[:, 1].std()) == pytest.approx(float(z[:, 2].std()), rel=0.1)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(compose_config([*TINY, f"output_dir={out}"]))
    return out


def evaluate(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "hierot.evaluate", *args, f"hydra.run.dir={tmp_path / 'eval'}",
         "enable_progress_bar=false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_evaluate_reproduces_the_runs_test_metrics_and_adds_the_rest(trained_run, tmp_path):
    trained = json.loads((trained_run / "metrics.json").read_text())
    run = evaluate(tmp_path, f"ckpt={trained['best_checkpoint']}")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    log = (tmp_path / "eval" / "evaluate.log").read_text()
    assert "test/cpcc_emd" in log and f"outputs: {tmp_path / 'eval'}" in log
    # data and backbone came from the run's config.yaml; same checkpoint, same test split
    for key in ("test/acc_fine", "test/acc_palette", "test/acc_shape", "test/acc_top5",
                "test/mistake_severity", "test/cpcc", "test/cpcc_l2"):  # fmt: skip
        assert got[key] == pytest.approx(trained[key], abs=1e-4), key
    assert got["test/cpcc_fastft"] == got["test/cpcc"]  # the run's distance
    for method in ("emd", "sinkhorn", "swd"):
        assert -1 <= got[f"test/cpcc_{method}"] <= 1
    for key in ("test/ahd@1", "test/ahd@5", "test/map_fine", "test/map_palette",
                "test/map_shape"):  # fmt: skip
        assert key in got, key
    assert got["test/ahd@1"] == pytest.approx(
        (1 - got["test/acc_fine"]) * got["test/mistake_severity"], abs=1e-4
    )  # AHD@1 is the severity spread over all samples
    assert got["test_samples"] == 24 * 3
    for figure in ("dendrograms.png", "embedding.png"):
        assert (tmp_path / "eval" / figure).stat().st_size > 10_000, figure


@pytest.mark.slow
def test_evaluate_reports_the_fields_tables_and_reads_shipped_distances(trained_run, tmp_path):
    trained = json.loads((trained_run / "metrics.json").read_text())
    leaves = json.loads((trained_run / "data.json").read_text())["classes"]
    shipped = tmp_path / "own_distances.csv"  # every pair 3 apart: no longer the tree's
    shipped.write_text("".join(f"{a},{b},3\n" for i, a in enumerate(leaves) for b in leaves[:i]))
    run = evaluate(
        tmp_path, f"ckpt={trained['best_checkpoint']}", "metrics=all", "figures=false",
        f"data.distances={shipped}", "knn_k=5", "ood=synthetic_ood", "ood.test_per_class=4",
        "ood_knn_k=[5]",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["test/acc_top1"] == pytest.approx(got["test/acc_fine"], abs=1e-6)
    assert got["test/severity_path"] == pytest.approx(got["test/mistake_severity"], abs=1e-5)
    for k in (1, 5):
        assert got[f"test/hdist_path@{k}"] == pytest.approx(got[f"test/ahd@{k}"], abs=1e-5)
    if got["test/acc_top1"] < 1:
        assert got["test/severity_lca"] == 3.0  # the file's heights, not the tree's
    keys = [
        "crm/acc_top1", "crm/severity_lca", "crm/hprec_path@5", "acc_palette_marginal",
        "acc_shape_marginal", "ece", "mce", "silhouette_palette", "silhouette_shape",
        "knn_acc@5", "proto_map_fine", "proto_precision_shape", "proto_recall_palette",
    ]  # fmt: skip
    for key in keys:
        assert f"test/{key}" in got, key
    assert 0 <= got["test/ece"] <= got["test/mce"] <= 1
    assert got["ood_set"] == "synthetic_ood" and got["ood_samples"] == 24 * 4
    for score in ("gaussian", "ssd", "mahalanobis", "knn@5"):
        for variant in ("raw", "norm"):
            for number in ("auroc", "aupr", "fpr95"):
                assert 0 <= got[f"ood/{score}_{variant}/{number}"] <= 1, (score, variant, number)
    assert -1 <= got["test/silhouette_shape"] <= 1
    log = (tmp_path / "eval" / "evaluate.log").read_text()
    # every key, the 24 ood/ ones too, in a table per family (tests/test_evaluation_report.py)
    report = log.split("every metric of metrics.json, by family:\n\n")[1].split("\n\n[")[0]
    printed = read_report(report)
    assert set(printed) == set(got) and sum(k.startswith("ood/") for k in printed) == 24
    assert {key: cell for key, (_, cell) in printed.items()} == {
        k: shown(v) for k, v in got.items()
    }
    assert printed["ood/ssd_norm/aupr"][0] == "OOD detection"
    assert printed["test/crm/hdist_lca@5"][0] == "mistakes"
    assert printed["test/nodes/plurality/wup"][0] == "node predictions"  # all: nodes too
    assert len((tmp_path / "eval" / "operating_curve.csv").read_text().splitlines()) == 1 + 1001
    (tmp_path / "k").mkdir()
    too_many = evaluate(tmp_path / "k", f"ckpt={trained['best_checkpoint']}", "metrics=knn",
                        "figures=false", "knn_k=100000")  # fmt: skip
    assert too_many.returncode == 2
    assert (
        too_many.stderr.strip()
        .splitlines()[-1]
        .startswith("hierot: error: knn_k: 100000 neighbours, but the training split has ")
    )


@pytest.mark.slow
def test_evaluate_errors_are_one_line(trained_run, tmp_path):
    def refused(*args):
        run = evaluate(tmp_path, *args)
        assert run.returncode == 2
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hierot: error: "), lines
        assert not (tmp_path / "eval").exists()  # nothing half-written left behind
        return lines[0][len("hierot: error: ") :]

    def prechecked(*args):
        with pytest.raises(ConfigError) as info:
            precheck(list(args))
        return str(info.value)

    missing = tmp_path / "missing.ckpt"
    assert refused(f"ckpt={missing}") == f"ckpt: no such checkpoint: {missing}"
    assert prechecked() == "ckpt: give a checkpoint file, ckpt=PATH"
    last = trained_run / "checkpoints" / "last.ckpt"
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("a text file")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    assert refused(f"ckpt={truncated}").startswith(
        f"ckpt: {truncated} is not a readable PyTorch checkpoint (truncated, or another kind"
    )
    assert "is not a readable PyTorch checkpoint" in prechecked(f"ckpt={not_ckpt}")
    assert prechecked(f"ckpt={last}", "dist=l2").startswith("dist: evaluate takes no dist=;")
    # every checkpoint of a sweep (-m ckpt=a,b) is checked before the first job runs
    assert prechecked(f"ckpt={last},{missing}") == f"ckpt: no such checkpoint: {missing}"
    assert prechecked(f"ckpt={last}", "+figure=false") == (
        "unknown key 'figure' (did you mean 'figures'?): nothing reads +figure=...; top-level "
        "keys: accelerator, ahd_k, ckpt, crm_cost, decode, decode_parent_ckpt, distances, "
        "enable_progress_bar, figures, knn_k, memory_mb, metrics, node_curve_points, ood_knn_k, "
        "output_dir, precision, top_down_threshold, top_k"
    )
    for args, message in [
        (["top_k=0"], "top_k must be an integer >= 1, got 0"),
        (["ahd_k=[1,0]"], "ahd_k[1] must be an integer >= 1, got 0"),
        (["top_k=[1,0]"], "top_k[1] must be an integer >= 1, got 0"),
        (["ahd_k=5"], "ahd_k must be a non-empty list, e.g. [1, 5], got 5"),
        (["decode=[argmax,xyz]"], "decode[1]: unknown decoding 'xyz'; available: argmax, crm, hie"),
        (["decode=xyz"], "decode: unknown decoding 'xyz'; available: argmax, crm, hie"),
        (["decode=[]"], "decode must be argmax, crm, hie or a list of them, got []"),
        (["crm_cost=height"], "crm_cost: unknown cost 'height'; available: lca, path"),
        (["metrics=[knn,umap]"], "metrics[1]: unknown metric family 'umap'; available: "),
        (["knn_k=0"], "knn_k must be an integer >= 1, got 0"),
        ([f"decode_parent_ckpt={last}"], "decode_parent_ckpt: only the hie decoding reads it; "),
        (
            ["decode=[argmax,hie]", f"decode_parent_ckpt={missing}"],
            f"decode_parent_ckpt: no such checkpoint: {missing}",
        ),
        (["node_curve_points=1"], "node_curve_points must be an integer >= 2, got 1"),
        (["top_down_threshold=1.5"], "top_down_threshold must be a number in [0, 1), got 1.5"),
        (["ood_knn_k=[50,0]"], "ood_knn_k[1] must be an integer >= 1, got 0"),
        (["ood=synthetic_ood", "ood.colours=3"], "Could not override 'ood.colours'"),
        (["figures=maybe"], "figures must be true or false, got 'maybe'"),
        (["enable_progress_bar=3"], "enable_progress_bar must be true/false or null, got 3"),
        (["precision=bf17"], "precision must be one of 64, 32, 16, 'transformer-engine', "),
    ]:
        assert prechecked(f"ckpt={last}", *args).startswith(message), args
    if not torch.cuda.is_available():  # Lightning's own check, once the run has started
        assert refused(f"ckpt={last}", "accelerator=gpu") == "No supported gpu backend found!"
    # another backbone than the one trained: found after the run started, still one line
    message = refused(f"ckpt={last}", "backbone=resnet34")
    assert "does not fit backbone=resnet34" in message
    assert refused(f"ckpt={last}", "ood=synthetic_ood", "ood.image_size=48") == (
        "ood: its images are 48 px, the model's data 32 px (set ood.image_size=32)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mtl", "supcon"])
def test_evaluate_and_transfer_read_checkpoints_with_extra_heads(tmp_path, objective):
    # mtl saves one head per coarse level beside the fine head, supcon a projection head
    out = tmp_path / "run"
    epochs = 5 if objective == "supcon" else 1  # its probe stage needs an epoch
    train(compose_config([*TINY, f"objective={objective}", "data.split=source",
                          f"trainer.max_epochs={epochs}", f"output_dir={out}"]))  # fmt: skip
    trained = json.loads((out / "metrics.json").read_text())
    run = evaluate(tmp_path, f"ckpt={trained['best_checkpoint']}", "figures=false")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("test/acc_fine", "test/acc_palette", "test/acc_shape", "test/cpcc"):
        assert got[key] == pytest.approx(trained[key], abs=1e-4), key
    assert -1 <= got["test/cpcc_l1"] <= 1
    transfer = subprocess.run(
        [sys.executable, "-m", "hierot.transfer", f"ckpt={trained['best_checkpoint']}",
         "shots=1", f"hydra.run.dir={tmp_path / 'transfer'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert transfer.returncode == 0, transfer.stderr[-3000:]
    moved = json.loads((tmp_path / "transfer" / "metrics.json").read_text())
    assert moved["data.split"] == "target" and 0 <= moved["transfer/acc_fine"] <= 1


@pytest.mark.slow
def test_test_cpcc_uses_the_runs_own_distance_options(tmp_path):
    out = tmp_path / "run"
    train(compose_config([*TINY, "dist=sinkhorn", "dist.options.reg=0.3", f"output_dir={out}"]))
    trained = json.loads((out / "metrics.json").read_text())
    run = evaluate(tmp_path, f"ckpt={out / 'checkpoints' / 'last.ckpt'}", "figures=false")
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert got["dist"] == "sinkhorn"
    # reg=0.3 as trained, while the shared cpcc_sinkhorn column uses conf/evaluate.yaml's reg=1
    assert got["test/cpcc"] == pytest.approx(trained["test/cpcc"], abs=1e-4)
    assert got["test/cpcc"] != got["test/cpcc_sinkhorn"]
    assert not (tmp_path / "eval" / "dendrograms.png").exists()


def test_figure_colours_are_the_class_names_where_those_are_colours():
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    from hierot.figures import group_colors

    assert group_colors(["red", "green", "blue"]) == [to_rgba(c) for c in ("red", "green", "blue")]
    tab10 = colormaps["tab10"]
    assert group_colors(["fruit", "flowers"]) == [tab10(0), tab10(1)]
    assert group_colors(["red", "azure"]) == [tab10(0), tab10(1)]  # azure is nearly white
    assert group_colors(["red", "red"]) == [tab10(0), tab10(1)]  # two groups, one colour


def test_evaluate_checks_the_classes_against_the_runs_data_json(tmp_path):
    from hierot.evaluate import check_run_classes

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    check_run_classes(ckpt, ["a", "b"])  # no data.json (an older run): nothing to check
    (run / "data.json").write_text(json.dumps({"classes": ["a", "b", "c"]}))
    check_run_classes(ckpt, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="class 1 is 'b' there and 'x' here"):
        check_run_classes(ckpt, ["a", "x", "c"])
    with pytest.raises(ConfigError, match="3 classes there, 2 here"):
        check_run_classes(ckpt, ["a", "b"])
    with pytest.raises(ConfigError, match=r"^decode_parent_ckpt: the data differs from what its"):
        check_run_classes(ckpt, ["a", "x", "c"], "decode_parent_ckpt")


@pytest.mark.slow
def test_figures_of_many_classes_show_a_seeded_sample(tmp_path):
    from hierot.evaluate import figure_classes, write_figures
    from tests.helpers.trees import balanced

    y = torch.arange(300).repeat(2)
    shown = figure_classes(y, limit=200)
    assert shown.numel() == 200 and torch.equal(shown, figure_classes(y.flip(0), limit=200))
    assert torch.equal(shown, shown.unique())  # sorted, distinct, the same on every call
    assert figure_classes(torch.arange(200)) is None
    tree = balanced([3, 10, 10])  # 300 classes
    z = torch.randn(600, 8, generator=torch.Generator().manual_seed(0))
    names = {1: "top", 2: "mid", 3: "fine"}
    write_figures(tmp_path, z, y, tree, "l2", {}, names, scores="acc 0.5")
    assert (tmp_path / "dendrograms.png").stat().st_size > 10_000
    assert (tmp_path / "embedding.png").stat().st_size > 10_000


@pytest.mark.slow
def test_hie_reads_a_second_checkpoint_and_the_node_family_writes_its_curve(trained_run, tmp_path):
    # a second run whose head scores every class alike: its summed softmax gives every parent
    # of the balanced synthetic tree the same probability, so hie ranks as argmax does (with
    # the model's own parents it does not: hie/acc_top1 0.042 against acc_top1 0.056 here)
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    flat = tmp_path / "flat"
    shutil.copytree(trained_run, flat)
    saved = torch.load(flat / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("head.weight", "head.bias"):
        saved["state_dict"][key].zero_()
    torch.save(saved, flat / "checkpoints" / "last.ckpt")
    run = evaluate(
        tmp_path, f"ckpt={ckpt}", "decode=[argmax,hie]", "figures=false", "distances={l2:{}}",
        f"decode_parent_ckpt={flat / 'checkpoints' / 'last.ckpt'}", "metrics=[nodes]",
        "node_curve_points=11",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("acc_top1", "acc_top5", "hdist_lca@5", "hops", "severity_path"):
        assert got[f"test/hie/{key}"] == pytest.approx(got[f"test/{key}"], abs=1e-9), key
    assert got["test/nodes/leaf/exact"] == pytest.approx(got["test/acc_fine"], abs=1e-6)
    assert got["test/nodes/majority/correct"] >= got["test/nodes/leaf/correct"]
    curve = (tmp_path / "eval" / "operating_curve.csv").read_text().splitlines()
    assert curve[0] == "threshold," + ",".join(NODE_METRICS)
    rows = [[float(v) for v in line.split(",")] for line in curve[1:]]
    assert [r[0] for r in rows] == pytest.approx([i / 10 for i in range(11)])
    assert rows[-1][1:3] == [1, 0] and rows[0][2] == pytest.approx(got["test/acc_fine"], abs=1e-5)
    assert 0 < got["test/nodes/curve/ac_info"] <= 1
