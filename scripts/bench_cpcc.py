"""Benchmark the CPCC loss: batched kernels vs a per-pair loop vs the cdist floor.

For each batch size B, features z (B, d) and labels drawn uniformly from C classes, it times
forward + backward of ``CPCCLoss`` for every method, the same math computed one class pair
at a time (one POT call or one greedy loop per pair, as the authors' research code does), and
one ``torch.cdist(z, z)`` forward + backward. Prints a markdown table.

    python scripts/bench_cpcc.py                       # CPU, B = 128 512 1024, 100 classes
    python scripts/bench_cpcc.py --device cuda --sizes 1024 2048 4096 --classes 1000 --no-loop
    python scripts/bench_cpcc.py --sizes 1024 2048 4096 --no-loop --methods fastft --route sparse

``--route`` forces how ``fastft`` computes its sample distances (``hierot.distances.pairwise``):
``auto`` picks by pair density, ``sparse`` (linear in B) and ``dense`` (one B x B GEMM) re-measure
the crossover ``SPARSE_BELOW_DENSITY`` on another machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import ot
import torch

from hierot import CPCCLoss, Hierarchy
from hierot.cpcc import pearson
from hierot.distances import pairwise

METHODS = ["l2", "emd", "sinkhorn", "swd", "fastft"]


def balanced_tree(num_classes: int, branching: int = 10) -> Hierarchy:
    """A 3-level tree over ``num_classes`` leaves: groups of ``branching``, then groups of
    those (CIFAR-100-like: 100 classes, 10 superclasses, ...)."""
    paths = [
        [f"top{c // branching**2}", f"mid{c // branching}", f"c{c}"] for c in range(num_classes)
    ]
    return Hierarchy.from_paths(paths)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[..., None], device: torch.device, repeats: int, *args: object) -> float:
    """Median wall time in ms of ``fn(*args)`` after one warm-up call."""
    fn(*args)
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        sync(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


# ---------------------------------------------------------------- per-pair loop baselines
def _uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def _pair_l2(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    return (za.mean(0) - zb.mean(0)).norm()


def _pair_emd(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    m = torch.cdist(za, zb)
    plan = ot.emd(_uniform(len(za)), _uniform(len(zb)), m.detach().double().cpu().numpy())
    return (torch.as_tensor(plan, dtype=m.dtype, device=m.device) * m).sum()


def _pair_sinkhorn(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    m = torch.cdist(za, zb)
    plan = ot.sinkhorn(
        _uniform(len(za)),
        _uniform(len(zb)),
        m.detach().double().cpu().numpy(),
        opts["reg"],
        method="sinkhorn_log",
        numItermax=opts["max_iter"],
        stopThr=opts["tol"],
    )
    return (torch.as_tensor(plan, dtype=m.dtype, device=m.device) * m).sum()


def _pair_swd(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    return ot.sliced_wasserstein_distance(za, zb, projections=opts["projections"], p=2)


def _pair_fastft(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    n, m = len(za), len(zb)
    a, b = [1.0 / n] * n, [1.0 / m] * m
    rows, cols, mass = [], [], []
    i = j = 0
    while i < n and j < m:
        f = min(a[i], b[j])
        rows.append(i)
        cols.append(j)
        mass.append(f)
        a[i] -= f
        b[j] -= f
        if a[i] <= 1e-12:
            i += 1
        if b[j] <= 1e-12:
            j += 1
    w = torch.tensor(mass, dtype=za.dtype, device=za.device)
    return (w * (za[rows] - zb[cols]).norm(dim=1)).sum()


PAIR_FNS = {
    "l2": _pair_l2,
    "emd": _pair_emd,
    "sinkhorn": _pair_sinkhorn,
    "swd": _pair_swd,
    "fastft": _pair_fastft,
}


def loop_loss(
    method: str, z: torch.Tensor, y: torch.Tensor, tree: torch.Tensor, opts: dict
) -> torch.Tensor:
    classes = torch.unique(y).tolist()
    groups = {c: z[y == c] for c in classes}
    dists, tdist = [], []
    for ia, a in enumerate(classes):
        for b in classes[ia + 1 :]:
            dists.append(PAIR_FNS[method](groups[a], groups[b], opts))
            tdist.append(tree[a, b])
    r, _ = pearson(torch.stack(dists), torch.stack(tdist))
    return 1 - r


def step_floor(z: torch.Tensor) -> None:
    z.grad = None
    torch.cdist(z, z).sum().backward()


def step_batched(loss_fn: CPCCLoss, z: torch.Tensor, y: torch.Tensor) -> None:
    z.grad = None
    loss_fn(z, y).backward()


def step_loop(
    method: str, z: torch.Tensor, y: torch.Tensor, tree: torch.Tensor, opts: dict
) -> None:
    z.grad = None
    loop_loss(method, z, y, tree, opts).backward()


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=1)
    parser.add_argument("--no-loop", action="store_true", help="skip the per-pair loops")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--reg", type=float, default=5.0, help="sinkhorn reg (absolute)")
    parser.add_argument("--projections", type=int, default=50, help="swd directions")
    parser.add_argument("--route", choices=["auto", "sparse", "dense"], default="auto")
    args = parser.parse_args()

    if args.route == "sparse":
        pairwise.DENSE_MAX_ENTRIES = 0
    elif args.route == "dense":
        pairwise.SPARSE_BELOW_DENSITY = 0.0
        pairwise.DENSE_MAX_ENTRIES = 2**62

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hierarchy = balanced_tree(args.classes)
    tree = hierarchy.tree_distances().to(device)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(args.dim, args.projections, generator=gen)
    theta = (theta / theta.norm(dim=0)).to(device)
    options = {
        "l2": {},
        "emd": {},
        "sinkhorn": {"reg": args.reg, "max_iter": 1000, "tol": 1e-6},
        "swd": {"projections": theta},
        "fastft": {},
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# CPCC loss forward+backward, float32, d={args.dim}, labels uniform over "
        f"{args.classes} classes, device={name}, torch threads={torch.get_num_threads()}; "
        f"sinkhorn reg={args.reg}, swd L={args.projections}; pair-distance route {args.route}; "
        "median ms"
    )
    print()
    print(
        "| B | classes present | pairs | method | batched ms | per-pair loop ms | speed-up "
        "| x cdist floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        z0 = torch.randn(size, args.dim, generator=gen).to(device)
        y = torch.randint(0, args.classes, (size,), generator=gen).to(device)
        k = int(torch.unique(y).numel())
        pairs = k * (k - 1) // 2
        z = z0.clone().requires_grad_()
        floor_ms = timed(step_floor, device, args.repeats, z)
        print(f"| {size} | {k} | {pairs} | cdist floor | {floor_ms:.2f} | | | 1.0 |")
        for method in args.methods:
            loss_fn = CPCCLoss(hierarchy, method, **options[method]).to(device)
            ms = timed(step_batched, device, args.repeats, loss_fn, z, y)
            loop_cell = speed_cell = ""
            if not args.no_loop:
                loop_ms = timed(
                    step_loop, device, args.loop_repeats, method, z, y, tree, options[method]
                )
                loop_cell = f"{loop_ms:.1f}"
                speed_cell = f"{loop_ms / ms:.0f}x"
            print(
                f"| {size} | {k} | {pairs} | {method} | {ms:.2f} | {loop_cell} | {speed_cell} "
                f"| {ms / floor_ms:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
