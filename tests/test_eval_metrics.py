"""The evaluation metrics of the papers hierot is compared with, against their transcribed
code (tests/helpers/eval_references.py): making-better-mistakes' table, CRM decoding,
calibration, coarse accuracy by marginalisation."""

import numpy as np
import pytest
import torch

from hierot.metrics.calibration import calibration_errors
from hierot.metrics.decoding import marginal_predictions, ranked_classes
from hierot.metrics.feature_space import (
    average_precisions,
    knn_accuracy,
    prototype_retrieval,
    silhouette,
)
from hierot.metrics.mistakes import mistake_metrics, top_k_accuracy
from hierot.metrics.ood import (
    detection_metrics,
    gaussian_score,
    knn_score,
    mahalanobis_score,
    normalized,
    ood_metrics,
    ssd_score,
)
from tests.helpers.eval_references import (
    average_precision_reference,
    crm_table,
    gaussian_ood_reference,
    get_measures_reference,
    guo_ece,
    knn_ood_reference,
    knn_reference,
    mahalanobis_reference,
    marginal_reference,
    mbm_table,
    mce,
    otcpcc_retrieval,
    silhouette_reference,
    ssd_eval_reference,
    ssd_reference,
)
from tests.helpers.loss_references import lca_height_reference
from tests.helpers.trees import TREES, balanced


def scores(n, k, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen, dtype=torch.float64) * scale, torch.randint(
        0, k, (n,), generator=gen
    )


def table(logits, target, cost, convention, ks=(1, 5), decode="argmax"):
    top = ranked_classes(logits, max(ks), decode, cost)
    metrics = {
        **top_k_accuracy(top, target, ks),
        **mistake_metrics(top, target, cost, convention, ks),
    }
    return {key: float(value) for key, value in metrics.items()}


@pytest.mark.parametrize("name", list(TREES))
def test_lca_heights_are_the_references(name):
    tree = TREES[name]
    k = tree.num_classes
    expected = [
        [lca_height_reference(tree, i, j) if i != j else 0 for j in range(k)] for i in range(k)
    ]
    assert tree.lca_heights().tolist() == expected


@pytest.mark.parametrize("name", list(TREES))
@pytest.mark.parametrize("convention", ["lca", "path"])
def test_mistake_table_equals_making_better_mistakes(name, convention):
    tree = TREES[name]
    cost = (
        tree.lca_heights(torch.float64)
        if convention == "lca"
        else tree.tree_distances(torch.float64)
    )
    logits, target = scores(96, tree.num_classes, seed=1)
    ref = mbm_table(logits.numpy(), target.numpy(), cost.numpy(), batch_size=32)
    got = table(logits, target, cost, convention)
    for k in (1, 5):
        j = min(k, tree.num_classes)
        assert got[f"acc_top{j}"] == pytest.approx(ref[f"accuracy_top/{k:02d}"], abs=1e-12)
        assert got[f"hdist_{convention}@{k}"] == pytest.approx(ref[f"_avg/{k:02d}"], abs=1e-12)
        assert got[f"best_{convention}@{k}"] == pytest.approx(ref[f"_top/{k:02d}"], abs=1e-12)
    assert got[f"severity_{convention}"] == pytest.approx(ref["_mistakes/avg01"], abs=1e-12)


def test_mbm_hierarchical_precision_divides_by_every_class_not_the_batch():
    # Its denominator sums the best similarities of all K classes where the numerator sums
    # the B samples: on a balanced tree (every class has the same best row) its hP@k is
    # ours times B / K; on others it is not even proportional.
    tree = balanced([2, 2, 3])
    cost = tree.lca_heights(torch.float64)
    logits, target = scores(96, tree.num_classes, seed=2)
    got = table(logits, target, cost, "lca")
    ref = mbm_table(logits.numpy(), target.numpy(), cost.numpy(), batch_size=32)
    ratio = 32 / tree.num_classes
    for k in (1, 5):
        assert ref[f"_precision/{k:02d}"] == pytest.approx(got[f"hprec_lca@{k}"] * ratio, abs=1e-12)
        assert ref[f"_mAP/{k:02d}"] == pytest.approx(got[f"hmap_lca@{k}"] * ratio, abs=1e-12)
    # by hand on one sample: true class 0, ranked 0 (cost 0), a sibling (1), a cousin (2)
    top, target = torch.tensor([[0, 1, 3]]), torch.tensor([0])
    cost = tree.lca_heights(torch.float64)
    assert cost[0, [0, 1, 3]].tolist() == [0, 1, 2]
    hp = {k: float(v) for k, v in mistake_metrics(top, target, cost, "lca", ks=(1, 3)).items()}
    best = 1 - cost[0].sort().values[:3] / 3  # 1, 2/3, 2/3
    assert hp["hprec_lca@1"] == 1.0
    assert hp["hprec_lca@3"] == pytest.approx((1 + 2 / 3 + 1 / 3) / float(best.sum()))
    assert hp["hmap_lca@3"] == pytest.approx((1 + (5 / 3) / (5 / 3) + 2 / float(best.sum())) / 3)


def test_mbm_drops_the_last_partial_batch():
    tree = TREES["3 levels"]
    cost = tree.lca_heights(torch.float64)
    logits, target = scores(100, tree.num_classes, seed=3)
    ref = mbm_table(logits.numpy(), target.numpy(), cost.numpy(), batch_size=32)
    first = table(logits[:96], target[:96], cost, "lca")
    whole = table(logits, target, cost, "lca")
    assert first["hdist_lca@5"] == pytest.approx(ref["_avg/05"], abs=1e-12)
    assert whole["hdist_lca@5"] != pytest.approx(ref["_avg/05"], abs=1e-6)


@pytest.mark.parametrize("name", list(TREES))
def test_crm_decoding_equals_the_crm_code(name):
    tree = TREES[name]
    cost = tree.lca_heights(torch.float64)
    logits, target = scores(80, tree.num_classes, seed=4, scale=1.5)
    ks = (1, 5, 20)
    for decode, rerank in (("crm", True), ("argmax", False)):
        ref = crm_table(logits.numpy(), target.numpy(), cost.numpy(), rerank=rerank)
        got = table(logits, target, cost, "lca", ks=ks, decode=decode)
        assert got["acc_top1"] == pytest.approx(ref["top1"], abs=1e-12)
        assert got["severity_lca"] == pytest.approx(ref["mistake_severity"], abs=1e-12)
        for k in ks:
            assert got[f"hdist_lca@{k}"] == pytest.approx(ref[f"hdist@{k}"], abs=1e-12)


def test_crm_ranks_by_expected_cost_and_lowers_severity_on_confused_siblings():
    # Probability mass split between two siblings and a far class with the single highest
    # probability: argmax picks the far class, CRM a sibling.
    tree = balanced([2, 2])  # classes 0, 1 siblings; 2, 3 siblings
    cost = tree.lca_heights()
    probs = torch.tensor([[0.3, 0.3, 0.4, 0.0]]) + 1e-9
    logits = probs.log()
    assert ranked_classes(logits, 1).item() == 2
    expected = probs @ cost  # 0.3 + 0.8, 0.3 + 0.8, 0.6 + 0.6, 0.6 * 2 + 0.4
    assert torch.allclose(expected, torch.tensor([[1.1, 1.1, 1.2, 1.6]]), atol=1e-6)
    assert ranked_classes(logits, 1, "crm", cost).item() in (0, 1)
    tree_path = tree.tree_distances()  # twice the heights here: the same ranking
    assert ranked_classes(logits, 1, "crm", tree_path).item() in (0, 1)


def test_ranking_in_row_blocks_is_the_ranking_at_once():
    tree = balanced([4, 5, 5])
    cost = tree.lca_heights()
    logits, _ = scores(300, tree.num_classes, seed=5)
    logits = logits.float()
    for decode in ("argmax", "crm"):
        whole = ranked_classes(logits, 5, decode, cost, memory_mb=1000)
        blocks = ranked_classes(logits, 5, decode, cost, memory_mb=0.001)  # one row a block
        assert torch.equal(whole, blocks)


@pytest.mark.parametrize("name", list(TREES))
def test_path_is_twice_lca_only_on_balanced_unit_trees(name):
    tree = TREES[name]
    logits, target = scores(64, tree.num_classes, seed=6)
    lca = table(logits, target, tree.lca_heights(torch.float64), "lca")
    path = table(logits, target, tree.tree_distances(torch.float64), "path")
    doubled = path["severity_path"] == pytest.approx(2 * lca["severity_lca"], abs=1e-12)
    assert doubled == (name != "unbalanced")


def test_calibration_equals_crm_where_no_confidence_is_on_a_bin_edge():
    logits, target = scores(500, 10, seed=7, scale=3.0)
    probs = logits.softmax(dim=1).numpy()
    edges = np.arange(1, 16) / 15
    assert np.abs(probs.max(1)[:, None] - edges).min() > 1e-6
    got = calibration_errors(logits, target)
    assert float(got["ece"]) == pytest.approx(guo_ece(probs, target.numpy()), abs=1e-6)
    assert float(got["mce"]) == pytest.approx(mce(probs, target.numpy()), abs=1e-6)
    assert float(got["ece"]) > 0.05


def test_calibration_of_saturated_confidences_differs_from_crm():
    # float32 softmax saturates at exactly 1.0: torchmetrics bins those alone, [1, 1], while
    # Guo et al. and CRM put them in (14/15, 1] with the confidences just below.
    target = torch.arange(40) % 4
    logits = torch.full((40, 4), -50.0)
    logits[torch.arange(40), target] = 50.0  # confidence 1.0, right ...
    logits[10:13] = logits[10:13].roll(1, dims=1)  # ... but wrong on 3 of the 30
    logits[:10] = 0.0
    logits[torch.arange(10), target[:10]] = 5.0  # confidence 0.980, right
    probs = logits.softmax(dim=1)
    assert (probs.max(1).values == 1.0).sum() == 30
    conf = float(probs[0].max())
    assert 14 / 15 < conf < 1
    got = calibration_errors(logits, target)
    ref = probs.double().numpy(), target.numpy()
    # torchmetrics: 10 right at conf, 27 of 30 right at 1.0
    assert float(got["ece"]) == pytest.approx(10 / 40 * (1 - conf) + 30 / 40 * 0.1, abs=1e-6)
    assert float(got["mce"]) == pytest.approx(0.1, abs=1e-6)
    # CRM: one bin of 40, 37 right, mean confidence (10 conf + 30) / 40
    assert guo_ece(*ref) == pytest.approx((10 * conf + 30) / 40 - 37 / 40, abs=1e-6)
    assert mce(*ref) == pytest.approx(guo_ece(*ref), abs=1e-12)
    assert float(got["ece"]) == pytest.approx(0.0800, abs=1e-4)
    assert guo_ece(*ref) == pytest.approx(0.0700, abs=1e-4)


@pytest.mark.parametrize("name", list(TREES))
def test_marginal_coarse_prediction_equals_hierarchycpcc(name):
    tree = TREES[name]
    logits, _ = scores(64, tree.num_classes, seed=8)
    for level in tree.levels:
        fine_to_level = tree.level_map(level)[1]
        expected = marginal_reference(logits, fine_to_level.numpy())
        assert torch.equal(marginal_predictions(logits, fine_to_level), expected)
        assert torch.equal(marginal_predictions(logits, fine_to_level, memory_mb=1e-4), expected)


def test_marginal_and_mapped_coarse_predictions_differ_where_the_mass_is_spread():
    tree = balanced([2, 3])  # concept 0: classes 0-2, concept 1: classes 3-5
    fine_to_top = tree.level_map(1)[1]
    probs = torch.tensor([[0.3, 0.3, 0.0, 0.4, 0.0, 0.0]]) + 1e-9
    assert fine_to_top[probs.argmax()].item() == 1  # mapped argmax
    assert marginal_predictions(probs.log(), fine_to_top).item() == 0  # 0.6 against 0.4


def clustered(n, classes, d=8, seed=0, spread=1.0, noise=None):
    """Samples around the centres of ``seed``, with the noise of ``noise`` (default seed)."""
    labels = torch.arange(n) % classes
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=gen, dtype=torch.float64) * 2
    gen = torch.Generator().manual_seed(seed if noise is None else noise)
    return centres[labels] + spread * torch.randn(n, d, generator=gen, dtype=torch.float64), labels


def test_silhouette_equals_the_per_sample_definition():
    z, labels = clustered(60, 4, seed=1)
    labels[0] = 7  # a label of one sample: counts 0
    expected = silhouette_reference(z.numpy(), labels.numpy())
    assert float(silhouette(z, labels)) == pytest.approx(expected, abs=1e-8)
    assert float(silhouette(z, labels, memory_mb=1e-4)) == pytest.approx(expected, abs=1e-8)
    separated, labels = clustered(40, 2, seed=2, spread=0.01)
    assert float(silhouette(separated, labels)) > 0.99
    with pytest.raises(ValueError, match="silhouette needs 2 to N - 1 labels, got 1"):
        silhouette(z, torch.zeros(60, dtype=torch.long))


def test_knn_accuracy_equals_scikit_learns_cosine_vote():
    bank, bank_labels = clustered(120, 5, seed=3, spread=2.0)
    queries, target = clustered(50, 5, seed=3, spread=2.0, noise=30)
    for k in (1, 7, 50):
        expected = knn_reference(queries.numpy(), bank.numpy(), bank_labels.numpy(), k)
        got = knn_accuracy(queries, target, bank, bank_labels, k, memory_mb=1e-3)
        assert float(got) == pytest.approx(float(np.mean(expected == target.numpy())), abs=1e-12)
    with pytest.raises(ValueError, match="knn: k = 121 needs 1 to 120 features in the bank"):
        knn_accuracy(queries, target, bank, bank_labels, 121)


def test_average_precision_equals_scikit_learn_with_ties():
    gen = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 5, (40, 3), generator=gen).double()  # many ties
    relevant = torch.rand(40, 3, generator=gen) < 0.3
    relevant[:, 2] = False  # nothing relevant: 0
    got = average_precisions(scores, relevant)
    for c in range(3):
        expected = average_precision_reference(
            relevant[:, c].numpy().astype(int), scores[:, c].numpy()
        )
        assert float(got[c]) == pytest.approx(expected, abs=1e-12)
    assert float(got[2]) == 0.0


def test_prototype_retrieval_equals_otcpcc():
    bank, bank_labels = clustered(90, 6, seed=5, spread=1.5)
    z, labels = clustered(48, 6, seed=5, spread=1.5, noise=50)
    expected = otcpcc_retrieval(bank.numpy(), bank_labels.numpy(), z.numpy(), labels.numpy())
    for memory_mb in (256, 1e-4):
        got = prototype_retrieval(z, labels, bank, bank_labels, memory_mb)
        for key in ("map", "precision", "recall"):
            assert float(got[key]) == pytest.approx(expected[key], abs=1e-6), key
    assert 0.3 < expected["map"] < 1.0


def ood_features(seed=9, d=6):
    """Training features of 4 classes, 100 test and 60 OOD samples (shifted, wider)."""
    train, train_labels = clustered(200, 4, d=d, seed=seed, spread=1.0)
    inside, _ = clustered(100, 4, d=d, seed=seed, spread=1.0, noise=seed + 1)
    gen = torch.Generator().manual_seed(seed + 2)
    outside = 1.5 + 1.8 * torch.randn(60, d, generator=gen, dtype=torch.float64)
    return train, train_labels, inside, outside


@pytest.mark.slow
def test_ood_scores_equal_hierarchycpcc_and_hypstructure():
    train, labels, inside, outside = ood_features()
    tr = train.numpy()
    for x in (inside, outside):
        xn = x.numpy()
        got = gaussian_score(train, labels, x, memory_mb=0.01).numpy()
        assert np.allclose(got, gaussian_ood_reference(tr, labels.numpy(), xn), rtol=1e-9)
        assert np.allclose(-ssd_score(train, x).numpy(), ssd_reference(tr, xn), rtol=1e-9)
        for k in (1, 50):
            got = -knn_score(train, x, k, memory_mb=0.01).numpy()
            assert np.allclose(got, knn_ood_reference(tr, xn, k), rtol=1e-9)
        got = -mahalanobis_score(train, labels, x, memory_mb=0.01).numpy()
        assert np.allclose(got, mahalanobis_reference(train, labels.numpy(), x), rtol=1e-9)


def test_normalized_features_are_hypstructures():
    train, _, inside, _ = ood_features()
    tr, te = train.numpy().copy(), inside.numpy().copy()
    tr /= np.linalg.norm(tr, axis=-1, keepdims=True) + 1e-10
    te /= np.linalg.norm(te, axis=-1, keepdims=True) + 1e-10
    m, s = np.mean(tr, axis=0, keepdims=True), np.std(tr, axis=0, keepdims=True)
    got_train, got_test = normalized(train, inside)
    assert np.allclose(got_train.numpy(), (tr - m) / (s + 1e-10), atol=1e-12)
    assert np.allclose(got_test.numpy(), (te - m) / (s + 1e-10), atol=1e-12)


def test_ood_numbers_equal_hypstructures_get_measures():
    train, labels, inside, outside = ood_features()
    for score in (
        lambda x: knn_score(train, x, 50),
        lambda x: mahalanobis_score(train, labels, x),
        lambda x: gaussian_score(train, labels, x),
    ):
        sin, sout = score(inside), score(outside)
        auroc, aupr, fpr = get_measures_reference(sin.numpy(), sout.numpy())
        got = detection_metrics(sin, sout)
        # torchmetrics returns its curve statistics in float32
        assert float(got["auroc"]) == pytest.approx(auroc, abs=1e-6)
        assert float(got["aupr"]) == pytest.approx(aupr, abs=1e-6)
        assert float(got["fpr95"]) == pytest.approx(fpr, abs=1e-6)  # 100 inside: 95 % exact
        assert 0.6 < auroc < 1.0


def test_ssd_numbers_differ_from_hypstructures_in_the_aupr_convention():
    # HypStructure scores SSD with the OOD set positive (AUPR-Out) and reads its FPR at the
    # 95th percentile of the in-distances; hierot keeps in-distribution positive everywhere.
    train, _, inside, outside = ood_features()
    sin, sout = ssd_score(train, inside), ssd_score(train, outside)
    fpr, auroc, aupr_out = ssd_eval_reference(-sin.numpy(), -sout.numpy())
    got = detection_metrics(sin, sout)
    assert float(got["auroc"]) == pytest.approx(auroc, abs=1e-6)
    assert float(got["fpr95"]) == pytest.approx(fpr, abs=1e-6)
    aupr_in = get_measures_reference(sin.numpy(), sout.numpy())[1]
    assert float(got["aupr"]) == pytest.approx(aupr_in, abs=1e-6)
    assert abs(aupr_out - aupr_in) > 0.01, (aupr_out, aupr_in)


def test_tied_covariance_scale_changes_no_ood_number():
    # HypStructure divides the summed class covariances by d, not by the sample count: every
    # distance is scaled alike, the three numbers stay.
    train, labels, inside, outside = ood_features()
    sin, sout = mahalanobis_score(train, labels, inside), mahalanobis_score(train, labels, outside)
    a = detection_metrics(sin, sout)
    b = detection_metrics(sin * 7.3, sout * 7.3)
    assert all(float(a[k]) == pytest.approx(float(b[k])) for k in a)


def test_ood_metrics_report_every_score_on_raw_and_normalised_features():
    train, labels, inside, outside = ood_features()
    got = ood_metrics(train, labels, inside, outside, knn_k=(5, 50))
    names = ["gaussian", "ssd", "mahalanobis", "knn@5", "knn@50"]
    assert sorted(got) == sorted(
        f"{n}_{v}/{m}" for n in names for v in ("raw", "norm") for m in ("auroc", "aupr", "fpr95")
    )
    assert float(got["knn@50_raw/auroc"]) > 0.6


def test_ood_numbers_do_not_depend_on_the_scores_scale():
    # Mahalanobis distances of real features are in the thousands: a sigmoid of them would
    # tie every score at 0.
    train, labels, inside, outside = ood_features()
    sin, sout = mahalanobis_score(train, labels, inside), mahalanobis_score(train, labels, outside)
    small = detection_metrics(sin, sout)
    large = detection_metrics(sin * 1e4 - 5e3, sout * 1e4 - 5e3)
    assert float(small["auroc"]) > 0.6
    assert all(float(small[k]) == pytest.approx(float(large[k]), abs=1e-6) for k in small)
