import pytest
import torch

from hierot.distances import pairwise
from hierot.distances.pairwise import euclidean_distances, pair_distances, use_sparse


def random_pairs(size: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` distinct unordered pairs of ``0..size-1``, in random order and orientation."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.triu_indices(size, size, 1)
    pick = torch.randperm(a.numel(), generator=g)[:count]
    i, j = a[pick], b[pick]
    flip = torch.rand(count, generator=g) < 0.5
    return torch.where(flip, j, i), torch.where(flip, i, j)


@pytest.fixture(params=["sparse", "dense"])
def route(request, monkeypatch) -> str:
    """Force ``pair_distances`` down one route whatever the density."""
    if request.param == "sparse":
        monkeypatch.setattr(pairwise, "DENSE_MAX_ENTRIES", 0)
    else:
        monkeypatch.setattr(pairwise, "SPARSE_BELOW_DENSITY", 0.0)
    return request.param


def gathered(z: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return (z[i] - z[j]).norm(dim=1)


def test_distances_and_gradient_match_gathered_differences_float64(route):
    g = torch.Generator().manual_seed(1)
    z = (5 + 3 * torch.randn(40, 7, generator=g, dtype=torch.float64)).requires_grad_()
    i, j = random_pairs(40, 150)
    assert use_sparse(40, 150, z.device) == (route == "sparse")
    weight = torch.rand(150, generator=g, dtype=torch.float64)
    got = pair_distances(z, i, j)
    (grad,) = torch.autograd.grad((weight * got).sum(), z)
    z_ref = z.detach().clone().requires_grad_()
    ref = gathered(z_ref, i, j)
    (weight * ref).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, z_ref.grad, rtol=1e-10, atol=1e-12)
    assert float(got.detach().min()) > 1.0  # the check above is not comparing zeros


def test_gradcheck(route):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    i, j = random_pairs(9, 20, seed=3)
    assert torch.autograd.gradcheck(lambda x: pair_distances(x, i, j), (z,))


def test_coincident_samples_are_zero_apart_with_zero_gradient(route):
    z = torch.tensor([[1.0, 2.0], [1.0, 2.0], [4.0, 6.0]], requires_grad=True)
    d = pair_distances(z, torch.tensor([0, 0, 2]), torch.tensor([1, 2, 1]))
    assert d.tolist() == [0.0, 5.0, 5.0]
    d.sum().backward()
    # only the two 3-4-5 pairs pull: +-(3, 4)/5 on sample 2, one each on samples 0 and 1
    torch.testing.assert_close(z.grad, torch.tensor([[-0.6, -0.8], [-0.6, -0.8], [1.2, 1.6]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_devices_and_dtypes_agree_with_cdist(device, dtype, route):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(300, 64, generator=g, dtype=torch.float64).to(device, dtype)
    i, j = random_pairs(300, 2000, seed=5)
    i, j = i.to(device), j.to(device)
    got = pair_distances(z, i, j)
    assert got.dtype == dtype and got.device.type == device
    ref = torch.cdist(z.double(), z.double())[i, j]
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)


def test_all_pairs_match_row_differences_values_and_gradient(device):
    g = torch.Generator().manual_seed(6)
    z = (2 + torch.randn(30, 6, generator=g, dtype=torch.float64)).to(device)
    z[7] = z[3]  # a coincident pair: 0 apart, zero gradient between them
    weight = torch.rand(30, 30, generator=g, dtype=torch.float64).to(device)
    z1 = z.clone().requires_grad_()
    got = euclidean_distances(z1)
    (weight * got).sum().backward()
    # Reference: norms of explicit differences, the zero-distance entries left out of the
    # gradient (the norm is not differentiable there; torch.cdist returns ~1e-7 on its
    # diagonal instead of 0).
    i, j = torch.triu_indices(30, 30, 1, device=device)
    keep = ~((i == 3) & (j == 7))
    i, j = i[keep], j[keep]
    z2 = z.clone().requires_grad_()
    ref = gathered(z2, i, j)
    ((weight[i, j] + weight[j, i]) * ref).sum().backward()
    torch.testing.assert_close(got[i, j], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.T, got, rtol=1e-14, atol=1e-14)
    assert torch.all(got.diagonal() == 0) and got[3, 7] == 0
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-10, atol=1e-12)


def test_route_follows_pair_density():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # fastft with 100 classes: (k - 1) B pairs
    assert not use_sparse(512, 99 * 512 // 2 * 2, cpu)  # density 0.19: GEMM
    assert use_sparse(2048, 99 * 2048, cpu)  # density 0.048
    assert not use_sparse(2048, 99 * 2048, cuda)
    assert use_sparse(2**15, 99 * 2**15, cuda)  # a 4 GiB distance matrix is not built
