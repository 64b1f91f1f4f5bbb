"""Benchmark hierot.evaluate's metric families on features of a given size: the time and the
peak memory of each, the model's forward pass excluded.

Features are Gaussian clusters (N test and M training samples of K classes on a 3-level
tree, d dimensions), logits a noisy copy of the labels. Each family runs in a fresh process,
so its peak resident memory is its own (minus the features, measured before). ``--csv``
writes a results CSV (``hierot.results``: the machine, torch, commit and date first), which
``scripts/render_results.py`` renders into ``docs/results/evaluate_benchmark.md``.

    python scripts/bench_evaluate.py --csv docs/results/evaluate_benchmark_2400x24.csv
    python scripts/bench_evaluate.py --test 5000 --train 10000 --classes 200 \
        --csv docs/results/evaluate_benchmark_5000x200.csv
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import torch

from hierot.hierarchy import Hierarchy
from hierot.metrics.features import evaluate_features, feature_space_metrics
from hierot.metrics.ood import ood_metrics
from hierot.results import command_line, write_results

FAMILIES = ("default", "silhouette", "knn", "prototypes", "ood")
MEMORY = "peak memory beyond the features (MB)"


def tree(num_classes: int) -> Hierarchy:
    return Hierarchy.from_paths(
        [[f"top{c // 100}", f"mid{c // 10}", f"c{c}"] for c in range(num_classes)]
    )


def features(n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = torch.randn(k, d, generator=torch.Generator().manual_seed(0)) * 2
    z = centres[y] + torch.randn(n, d, generator=gen)
    logits = torch.nn.functional.one_hot(y, k).float() * 4 + torch.randn(n, k, generator=gen)
    return z, logits, y


def run_family(family: str, args: argparse.Namespace, queue: mp.Queue) -> None:
    hierarchy = tree(args.classes)
    names = {1: "top", 2: "mid", 3: "fine"}
    z, logits, y = features(args.test, args.classes, args.dim, 1)
    zt, _, yt = features(args.train, args.classes, args.dim, 2)
    zo = torch.randn(args.test // 2, args.dim) * 3
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if family == "default":
        evaluate_features(z, logits, y, hierarchy, names, {"l2": {}}, memory_mb=args.memory_mb)
    elif family == "ood":
        ood_metrics(zt, yt, z, zo, knn_k=(50, 200), memory_mb=args.memory_mb)
    else:
        feature_space_metrics(z, y, hierarchy, names, [family], (zt, yt), memory_mb=args.memory_mb)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((seconds, max(peak - before, 0) / 1024))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=int, default=2400, help="N, test samples")
    parser.add_argument("--train", type=int, default=9600, help="M, training samples")
    parser.add_argument("--classes", type=int, default=24, help="K")
    parser.add_argument("--dim", type=int, default=512, help="d")
    parser.add_argument("--memory-mb", type=float, default=256)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--csv", type=Path, help="write the results CSV here")
    args = parser.parse_args()

    rows = []
    ctx = mp.get_context("spawn")
    for family in args.families:
        queue = ctx.Queue()
        proc = ctx.Process(target=run_family, args=(family, args, queue))
        proc.start()
        seconds, extra_mb = queue.get()
        proc.join()
        rows.append({"family": family, "seconds": round(seconds, 2), MEMORY: round(extra_mb)})
        print(f"{family:<11} {seconds:8.2f} s {extra_mb:8.0f} MB", flush=True)
    size = (
        f"N = {args.test} test and M = {args.train} training samples, K = {args.classes} "
        f"classes, d = {args.dim}, memory_mb = {args.memory_mb:g}"
    )
    if args.csv:
        write_results(args.csv, rows, command_line(), notes=[size])


if __name__ == "__main__":
    main()
