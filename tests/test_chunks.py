"""Class pairs in memory-bounded chunks: the same numbers as all pairs at once."""

import numpy as np
import pytest
import torch

from hierot.correlation import cpcc, pearson, present_tree_distances
from hierot.distances import batch as batch_module
from hierot.distances import (
    class_distance_chunks,
    class_distances,
    list_distances,
    register_distance,
)
from hierot.distances import registry as registry_module
from hierot.hierarchy import Hierarchy

# A budget of a few kB cuts the ~700 pairs below into dozens of chunks (or single pairs).
TINY_MB = 0.004


def many_classes(num_classes: int = 38, samples: int = 160, dim: int = 6, seed: int = 0):
    """Unequal classes (1 to ~10 samples), interleaved, with some class structure."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (samples,), generator=g)
    y[:num_classes] = torch.arange(num_classes)  # every class present
    centers = 2 * torch.randn(num_classes, dim, generator=g, dtype=torch.float64)
    z = centers[y] + torch.randn(samples, dim, generator=g, dtype=torch.float64)
    return z, y


def options(method: str) -> dict:
    if method == "swd":  # without a seed it would draw new directions per call
        return {"seed": 3}
    if method == "sinkhorn":  # converged far below the differences the tests look for
        return {"tol": 1e-13, "max_iter": 5000}
    return {}


def chunking_budget(method: str, z: torch.Tensor, y: torch.Tensor) -> float:
    """The largest budget (halving from 1 MB) that cuts the batch into at least 8 chunks:
    many chunks, without one pair per chunk (which makes the gradient tests slow)."""
    memory_mb = 1.0
    while (
        sum(1 for _ in class_distance_chunks(z.detach(), y, method, memory_mb, **options(method)))
        < 8
    ):
        memory_mb /= 2
    return memory_mb


def tree(num_classes: int) -> torch.Tensor:
    paths = [[f"t{c % 3}", f"t{c % 3}m{c % 7}", f"c{c}"] for c in range(num_classes)]
    return Hierarchy.from_paths(paths).tree_distances(torch.float64)


@pytest.mark.parametrize("method", list_distances())
def test_chunks_cover_every_pair_once_in_triu_order(method):
    z, y = many_classes()
    chunks = list(class_distance_chunks(z, y, method, TINY_MB, **options(method)))
    assert len(chunks) > 5, "the budget must force chunks for this test to mean anything"
    k = torch.unique(y).numel()
    a, b = torch.triu_indices(k, k, 1)
    assert torch.equal(torch.cat([c.pair_a for c, _ in chunks]), a)
    assert torch.equal(torch.cat([c.pair_b for c, _ in chunks]), b)
    assert all(d.numel() == c.num_pairs for c, d in chunks)


@pytest.mark.parametrize("method", list_distances())
def test_chunked_values_and_gradients_equal_all_pairs(method):
    z, y = many_classes(seed=1)
    weights = torch.linspace(-1, 1, 38 * 37 // 2, dtype=torch.float64)
    results = []
    for memory_mb in (1024.0, chunking_budget(method, z, y)):
        zg = z.clone().requires_grad_()
        _, dist = class_distances(zg, y, method, memory_mb, **options(method))
        (weights * dist).sum().backward()
        with torch.no_grad():
            _, plain = class_distances(z, y, method, memory_mb, **options(method))
        results.append((dist.detach(), plain, zg.grad))
    (d_all, p_all, g_all), (d_chunk, p_chunk, g_chunk) = results
    np.testing.assert_allclose(d_chunk.numpy(), d_all.numpy(), rtol=1e-11)
    np.testing.assert_allclose(p_chunk.numpy(), d_all.numpy(), rtol=1e-11)
    np.testing.assert_allclose(p_all.numpy(), d_all.numpy(), rtol=1e-12)
    np.testing.assert_allclose(g_chunk.numpy(), g_all.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["emd", "sinkhorn", "fastft"])
def test_no_sample_matrix_beyond_the_budget(method, monkeypatch):
    z, y = many_classes(seed=2)
    _, expect = class_distances(z, y, method, **options(method))

    def refuse(_):
        raise AssertionError("built the (B, B) sample distances")

    monkeypatch.setattr(batch_module, "euclidean_distances", refuse)
    # 160 samples: the B x B matrix (3 copies of 200 kB) does not fit 0.1 MB
    _, got = class_distances(z, y, method, 0.1, **options(method))
    np.testing.assert_allclose(got.numpy(), expect.numpy(), rtol=1e-6)


@pytest.mark.parametrize("method", list_distances())
def test_streamed_cpcc_equals_pearson_of_all_pairs(method):
    z, y = many_classes(seed=4)
    t = tree(38)
    classes, dist = class_distances(z, y, method, **options(method))
    expect, _ = pearson(dist, present_tree_distances(classes, t, dist.numel()))
    for memory_mb in (1024.0, chunking_budget(method, z, y)):
        got = cpcc(z, y, t, method, memory_mb, **options(method))  # no grad: streamed
        assert float(got) == pytest.approx(float(expect), abs=1e-9)
    budget = chunking_budget(method, z, y)
    with_grad = cpcc(z.clone().requires_grad_(), y, t, method, budget, **options(method))
    assert with_grad.requires_grad
    assert float(with_grad.detach()) == pytest.approx(float(expect), abs=1e-9)


def test_streamed_cpcc_is_undefined_where_pearson_is():
    z, y = many_classes(seed=5)
    flat = torch.full((38, 38), 2.0, dtype=torch.float64)  # every pair equally far
    assert float(cpcc(z, y, flat, "l2", TINY_MB)) == 0
    same = torch.zeros(40, 3, dtype=torch.float64)  # every class at one point
    assert float(cpcc(same, torch.arange(40) % 10, tree(10), "fastft", TINY_MB)) == 0
    assert float(cpcc(z[:2], y[:2], tree(38), "l2")) == 0  # fewer than 3 pairs


@pytest.mark.parametrize("bad", [0, -1.0, "a", True, None])
def test_bad_budget_is_one_line(bad):
    z, y = many_classes()
    with pytest.raises(ValueError, match="memory_mb must be a number of megabytes > 0"):
        class_distances(z, y, "l2", bad)


def test_a_distance_without_memory_model_gets_all_pairs_at_once():
    seen = []

    @register_distance("test_count_pairs")
    def count_pairs(batch):
        seen.append(batch.num_pairs)
        return torch.zeros(batch.num_pairs, dtype=batch.z.dtype)

    try:
        z, y = many_classes()
        class_distances(z, y, "test_count_pairs", TINY_MB)
        assert seen == [38 * 37 // 2]
    finally:
        registry_module._DISTANCES.pop("test_count_pairs")
