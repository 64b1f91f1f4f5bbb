"""Our batched Sinkhorn against POT's batch solver on the same padded problems.

POT 0.9.7 added ``ot.batch.solve_batch``, which solves a stack of OT problems at once, as
``hierot.distances.sinkhorn.sinkhorn_plans`` does. This times both on the class pairs of a
batch (features z (B, d), labels uniform over C classes) at each ``--reg`` (relative to each
pair's mean cost, as ``reg_scale=mean``: POT takes one scalar reg, so it gets each pair's
costs divided by its reg and reg = 1, the same problem), and reports the largest plan
difference and both solvers' largest marginal error.

    python scripts/bench_pot_batch.py --sizes 128 512 --reg 0.05 0.1 0.3 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import ot
import ot.batch
import torch

from hierot.distances.batch import all_pairs, group_by_class
from hierot.distances.sinkhorn import pair_regularization, sinkhorn_plans
from hierot.results import PrintedTable


def pot_plans(cost: torch.Tensor, valid_a, valid_b, reg: torch.Tensor, tol: float, max_iter):
    """POT's batch log-domain Sinkhorn on the same padded problems: padding gets zero mass
    (its log-weight is -inf, so it carries no plan) and a zero cost."""
    a = valid_a.to(cost.dtype) / valid_a.sum(1, keepdim=True)
    b = valid_b.to(cost.dtype) / valid_b.sum(1, keepdim=True)
    scaled = cost / reg[:, None, None]
    res = ot.batch.solve_batch(
        scaled, reg=1.0, a=a, b=b, max_iter=max_iter, tol=tol, method="log_sinkhorn",
        grad="detach",
    )  # fmt: skip
    return res.plan


def ours_plans(cost, valid_a, valid_b, reg, max_iter: int, tol: float) -> torch.Tensor:
    return sinkhorn_plans(cost, valid_a, valid_b, reg, max_iter, tol).plans


def marginal_error(plans, valid_a, valid_b) -> float:
    a = valid_a.to(plans.dtype) / valid_a.sum(1, keepdim=True)
    b = valid_b.to(plans.dtype) / valid_b.sum(1, keepdim=True)
    err = (plans.sum(2) - a).abs().sum(1) + (plans.sum(1) - b).abs().sum(1)
    return float(err.max())


def median_ms(fn, repeats: int) -> tuple[float, object]:
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--reg", type=float, nargs="+", default=[0.05, 0.1, 0.3, 1.0])
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--csv", type=Path, help="write the table as a results CSV here")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    table = PrintedTable()
    table.print("| B | pairs | reg x mean cost | hierot ms | POT batch ms | max plan diff | "
                "hierot marginal err | POT marginal err |")  # fmt: skip
    table.print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        g = torch.Generator().manual_seed(size)
        z = torch.randn(size, args.dim, generator=g, dtype=dtype)
        y = torch.randint(0, args.classes, (size,), generator=g)
        batch = all_pairs(group_by_class(z, y))
        cost = batch.pair_cost_matrices().detach()
        n = cost.shape[1]
        va, vb = batch.mask[batch.pair_a, :n], batch.mask[batch.pair_b, :n]
        ca, cb = batch.counts[batch.pair_a], batch.counts[batch.pair_b]
        for reg in args.reg:
            pair_reg = pair_regularization(cost, ca, cb, reg, "mean")
            ours_ms, ours = median_ms(
                partial(ours_plans, cost, va, vb, pair_reg, args.max_iter, args.tol),
                args.repeats,
            )
            pot_ms, pot = median_ms(
                partial(pot_plans, cost, va, vb, pair_reg, args.tol, args.max_iter), args.repeats
            )
            diff = float((ours - pot).abs().max())
            table.print(f"| {size} | {batch.num_pairs} | {reg} | {ours_ms:.1f} | {pot_ms:.1f} | "
                        f"{diff:.1e} | {marginal_error(ours, va, vb):.1e} | "
                        f"{marginal_error(pot, va, vb):.1e} |")  # fmt: skip
    note = (
        f"{args.dtype}, d = {args.dim}, {args.classes} classes, tol={args.tol:g}, "
        f"max_iter={args.max_iter}; median of {args.repeats}"
    )
    table.write(args.csv, notes=[note])


if __name__ == "__main__":
    main()
