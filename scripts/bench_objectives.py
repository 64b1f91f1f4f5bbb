"""Benchmark the training objectives: forward + backward of each, batched, against the
reference repositories' loops (tests/helpers/loss_references.py) and against the cost of the
cross-entropy step and of a whole ResNet-18 training step.

Labels on a 3-level tree (``--classes`` leaves in groups of 10, then groups of those),
B = ``--batch`` samples, d = 512 features (ResNet-18's). Every objective gets the same z and
logits; the times are medians over ``--repeats`` calls after a warm-up. Prints the table;
``--csv`` writes it as a results CSV (``hierot.results``: the machine, torch, commit and
date first), which ``scripts/render_results.py`` renders into
``docs/results/objectives_benchmark.md``.

    python scripts/bench_objectives.py --csv docs/results/objectives_benchmark_k100.csv
    python scripts/bench_objectives.py --classes 1000 --reference marginal quadruplet hxe \
        soft_labels --csv docs/results/objectives_benchmark_k1000.csv
    python scripts/bench_objectives.py --classes 1000 --image-size 224 --batch 64 --reference \
        --csv docs/results/objectives_benchmark_k1000_224.csv
    python scripts/bench_objectives.py --device cuda --batch 2048 --classes 1000 --reference
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from hierot.hierarchy import Hierarchy
from hierot.objectives import build_objective, list_objectives
from hierot.results import command_line, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_cpcc import timed

from helpers.loss_references import (
    hxe_reference,
    make_all_soft_labels,
    make_batch_soft_labels,
    quadruplet_reference,
    sumloss_reference,
)


def tree(num_classes: int) -> Hierarchy:
    return Hierarchy.from_paths(
        [[f"top{c // 100}", f"mid{c // 10}", f"c{c}"] for c in range(num_classes)]
    )


def references(hierarchy: Hierarchy) -> dict:
    """The reference loops, each as ``fn(z, logits, y)``, with what they precompute once
    (soft labels' K x K targets, HXE's one-hot tensors) outside the timing."""
    parent = hierarchy.parent_map().numpy()
    weights = [1.0] * hierarchy.depth
    k = hierarchy.num_classes
    heights = hierarchy.lca_heights(torch.float64)
    all_soft = make_all_soft_labels(
        {(i, j): float(heights[i, j]) for i in range(k) for j in range(k)}, range(k), 10.0
    ).float()

    def soft_labels(z, logits, y):
        target = make_batch_soft_labels(all_soft, y, k, len(y))
        return torch.nn.KLDivLoss(reduction="batchmean")(F.softmax(logits, 1).log(), target)

    hxe = hxe_reference(hierarchy, None, None, 0.4, False, prepare_only=True)
    return {
        "hxe": lambda z, logits, y: hxe(logits, y),
        "marginal": lambda z, logits, y: sumloss_reference(hierarchy, logits, y, weights),
        "soft_labels": soft_labels,
        "quadruplet": lambda z, logits, y: (
            0.2 * quadruplet_reference(F.normalize(z, dim=-1), y, parent)
            + 0.8 * F.cross_entropy(logits, y)
        ),
    }


def step(fn, z: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    z.grad = logits.grad = None
    fn(z, logits, y).backward()


def resnet18_step_ms(
    batch: int, classes: int, device: torch.device, repeats: int, image_size: int = 32
) -> float:
    """One SGD training step of the default run's ResNet-18 (ImageNet stem) with a
    ``classes``-way head on ``image_size`` square images."""
    from hierot.models import create_backbone

    backbone = create_backbone("resnet18", stem="standard").to(device)
    head = torch.nn.Linear(backbone.num_features, classes).to(device)
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def train_step() -> None:
        optimizer.zero_grad()
        F.cross_entropy(head(backbone(x)), y).backward()
        optimizer.step()

    return timed(train_step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--image-size", type=int, default=32,
        help="the ResNet-18 step's images (32: CIFAR-sized, as the default run; 224: the "
        "ImageNet-sized images of the benchmarks with 1000 classes)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--reference", nargs="*", default=None,
        help="the objectives timed against their reference (default: all that have one; "
        "none: --reference with no name)",
    )  # fmt: skip
    parser.add_argument("--csv", type=Path, default=None, help="write the results CSV here")
    args = parser.parse_args()
    device = torch.device(args.device)
    hierarchy = tree(args.classes)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    z = torch.randn(args.batch, args.dim, generator=g).to(device).requires_grad_()
    logits = torch.randn(args.batch, args.classes, generator=g).to(device).requires_grad_()
    loops = references(hierarchy)
    if args.reference is not None:
        loops = {k: v for k, v in loops.items() if k in args.reference}
    ce_ms = timed(step, device, args.repeats, lambda z, lg, y: F.cross_entropy(lg, y), z, logits, y)
    resnet_ms = resnet18_step_ms(
        args.batch, args.classes, device, max(2, args.repeats // 5), args.image_size
    )

    note = (
        f"B = {args.batch}, K = {args.classes} on a 3-level tree, d = {args.dim}, "
        f"{args.device}; forward + backward, median of {args.repeats}. Cross-entropy alone: "
        f"{ce_ms:.2f} ms; a ResNet-18 training step ({args.image_size} x {args.image_size} "
        f"images, SGD): {resnet_ms:.0f} ms."
    )
    rows = []
    for name in list_objectives():
        objective = build_objective(name, hierarchy, args.dim, {}).to(device)
        ours = timed(step, device, args.repeats, objective, z, logits, y)
        extra = max(ours - ce_ms, 0.0)
        ref = None
        if name in loops:
            ref = timed(step, device, max(2, args.repeats // 5), loops[name], z, logits, y)
        rows.append({
            "objective": name,
            "hierot (ms)": f"{ours:.2f}",
            "minus CE (ms)": f"{extra:.2f}",
            "share of a ResNet-18 step": f"{100 * extra / resnet_ms:.2f} %",
            "reference (ms)": "—" if ref is None else f"{ref:.1f}",
            "speed-up": "—" if ref is None else f"{ref / ours:.0f}x",
        })  # fmt: skip
        print(" | ".join(str(v) for v in rows[-1].values()), flush=True)
    print(note)
    if args.csv is not None:
        write_results(args.csv, rows, command_line(), notes=[note])


if __name__ == "__main__":
    main()
