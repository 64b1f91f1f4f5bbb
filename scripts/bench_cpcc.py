"""Benchmark the CPCC loss: batched kernels vs a per-pair loop vs the cdist floor.

For each batch size B, features z (B, d) and labels drawn uniformly from C classes, it times
forward + backward of ``CPCCLoss`` for every method, the same math computed one class pair
at a time (one POT call or one greedy loop per pair, as the authors' research code does), and
one ``torch.cdist(z, z)`` forward + backward. Prints a markdown table; ``--csv`` writes it as a
results CSV (``hierot.results``) for ``docs/results/`` (``scripts/render_results.py``).

    python scripts/bench_cpcc.py                       # CPU, B = 128 512 1024, 100 classes
    python scripts/bench_cpcc.py --device cuda --sizes 1024 2048 4096 --classes 1000 --no-loop
    python scripts/bench_cpcc.py --sizes 1024 2048 4096 --no-loop --methods fastft --route sparse

``--route`` forces how ``fastft`` computes its sample distances (``hierot.distances.pairwise``):
``auto`` picks by pair density, ``sparse`` (linear in B) and ``dense`` (one B x B GEMM) re-measure
the crossover ``SPARSE_BELOW_DENSITY`` on another machine.

Sinkhorn gets one row per ``--reg`` value (``--reg-scale mean`` makes them relative to each
pair's mean cost, as ``reg_scale=mean`` does), with the solver's iterations (mean / max over
pairs, annealing included) and the largest relative error against POT in float64 run to
convergence (``stopThr=1e-12``) on up to ``--check-pairs`` pairs:

    python scripts/bench_cpcc.py --sizes 128 512 --methods sinkhorn --reg 0.1 0.5 1 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ot
import torch

from hierot import CPCCLoss, Hierarchy
from hierot.correlation import pearson
from hierot.distances import pairwise
from hierot.distances.batch import all_pairs, group_by_class
from hierot.distances.sinkhorn import pair_regularization, sinkhorn_plans
from hierot.results import PrintedTable

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


def _pot_sinkhorn(m: np.ndarray, opts: dict, max_iter: int, tol: float) -> np.ndarray:
    """POT's log-domain Sinkhorn on one pair, with the reg hierot would use for it."""
    reg = opts["reg"] * (m.mean() if opts.get("reg_scale") == "mean" else 1.0)
    a, b = _uniform(m.shape[0]), _uniform(m.shape[1])
    return ot.sinkhorn(a, b, m, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=tol)


def _pair_sinkhorn(za: torch.Tensor, zb: torch.Tensor, opts: dict) -> torch.Tensor:
    m = torch.cdist(za, zb)
    plan = _pot_sinkhorn(m.detach().double().cpu().numpy(), opts, opts["max_iter"], opts["tol"])
    return (torch.as_tensor(plan, dtype=m.dtype, device=m.device) * m).sum()


def sinkhorn_report(
    z: torch.Tensor, y: torch.Tensor, opts: dict, check_pairs: int
) -> tuple[str, str]:
    """(iterations mean / max, largest relative error vs converged float64 POT) cells."""
    batch = all_pairs(group_by_class(z.detach(), y))
    cost = batch.pair_cost_matrices()
    n = cost.shape[1]
    mask_a, mask_b = batch.mask[batch.pair_a, :n], batch.mask[batch.pair_b, :n]
    counts_a, counts_b = batch.counts[batch.pair_a], batch.counts[batch.pair_b]
    reg = pair_regularization(cost, counts_a, counts_b, opts["reg"], opts["reg_scale"])
    result = sinkhorn_plans(cost, mask_a, mask_b, reg, opts["max_iter"], opts["tol"])
    got = (result.plans * cost).sum(dim=(1, 2)).double().cpu().numpy()
    its = result.iterations.float()
    worst = 0.0
    picks = np.random.default_rng(0).permutation(len(got))[:check_pairs]
    host = cost.double().cpu().numpy()
    n_a, n_b = batch.counts[batch.pair_a].tolist(), batch.counts[batch.pair_b].tolist()
    for p in picks.tolist():
        m = host[p, : n_a[p], : n_b[p]]
        ref = float((_pot_sinkhorn(m, opts, 200_000, 1e-12) * m).sum())
        worst = max(worst, abs(got[p] - ref) / ref)
    unconverged = int((~result.converged).sum())
    its_cell = f"{its.mean():.0f} / {its.max():.0f}" + (
        f" ({unconverged} unconverged)" if unconverged else ""
    )
    return its_cell, f"{worst:.1e}"


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
    parser.add_argument("--reg", type=float, nargs="+", default=[5.0], help="sinkhorn reg values")
    parser.add_argument("--reg-scale", choices=["none", "mean"], default="none")
    parser.add_argument(
        "--check-pairs", type=int, default=200, help="pairs checked against converged POT"
    )
    parser.add_argument("--projections", type=int, default=50, help="swd directions")
    parser.add_argument("--route", choices=["auto", "sparse", "dense"], default="auto")
    parser.add_argument("--csv", type=Path, help="write the table as a results CSV here")
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
    runs: list[tuple[str, dict]] = []
    for method in args.methods:
        if method == "sinkhorn":
            runs += [
                (method, {"reg": r, "reg_scale": args.reg_scale, "max_iter": 1000, "tol": 1e-6})
                for r in args.reg
            ]
        else:
            runs.append((method, {"swd": {"projections": theta}}.get(method, {})))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    note = (
        f"CPCC loss forward+backward, float32, d={args.dim}, labels uniform over "
        f"{args.classes} classes, device={name}, torch threads={torch.get_num_threads()}; "
        f"sinkhorn reg_scale={args.reg_scale}, swd L={args.projections}; pair-distance route "
        f"{args.route}; median of {args.repeats}, ms"
    )
    print(f"# {note}\n")
    table = PrintedTable()
    table.print(
        "| B | classes present | pairs | method | batched ms | per-pair loop ms | speed-up "
        "| x cdist floor | sinkhorn iterations mean / max | max rel. error vs POT |"
    )
    table.print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        z0 = torch.randn(size, args.dim, generator=gen).to(device)
        y = torch.randint(0, args.classes, (size,), generator=gen).to(device)
        k = int(torch.unique(y).numel())
        pairs = k * (k - 1) // 2
        z = z0.clone().requires_grad_()
        floor_ms = timed(step_floor, device, args.repeats, z)
        table.print(f"| {size} | {k} | {pairs} | cdist floor | {floor_ms:.2f} | | | 1.0 | | |")
        for method, opts in runs:
            loss_fn = CPCCLoss(hierarchy, method, **opts).to(device)
            ms = timed(step_batched, device, args.repeats, loss_fn, z, y)
            loop_cell = speed_cell = its_cell = error_cell = ""
            if not args.no_loop:
                loop_ms = timed(step_loop, device, args.loop_repeats, method, z, y, tree, opts)
                loop_cell = f"{loop_ms:.1f}"
                speed_cell = f"{loop_ms / ms:.0f}x"
            name = method
            if method == "sinkhorn":
                its_cell, error_cell = sinkhorn_report(z, y, opts, args.check_pairs)
                name = f"sinkhorn reg={opts['reg']:g}" + (
                    " x mean cost" if opts["reg_scale"] == "mean" else ""
                )
            table.print(
                f"| {size} | {k} | {pairs} | {name} | {ms:.2f} | {loop_cell} | {speed_cell} "
                f"| {ms / floor_ms:.1f} | {its_cell} | {error_cell} |"
            )
    table.write(args.csv, notes=[note])


if __name__ == "__main__":
    main()
