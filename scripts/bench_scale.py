"""Time and peak memory of class distances and TestCPCC at dataset scale (no gradient).

Every row runs in a fresh Python process, so its peak RSS is its own; that peak includes the
process's baseline (the torch import, printed as the ``baseline`` row). Features are N(0, 1),
every class has the same number of samples, the tree is the 3-level one of ``bench_cpcc.py``
(groups of 10, then of 100).

    python scripts/bench_scale.py                      # the issue's rows (several minutes)
    python scripts/bench_scale.py --rows fastft:2000x10 cpcc-l2:10000x10 --memory-mb 512
    python scripts/bench_scale.py --device cuda --rows cpcc-fastft:10000x10

A row is ``METHOD:CLASSESxSAMPLES`` (``class_distances``) or ``cpcc-METHOD:CLASSESxSAMPLES``
(``cpcc`` over the whole split with the tree, as TestCPCC computes it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_ROWS = [
    "fastft:2000x10",
    "emd:2000x10",
    "sinkhorn:1000x10",
    "fastft:5000x4",
    "l2:10000x2",
    "cpcc-l2:1000x50",
    "cpcc-fastft:1000x50",
    "cpcc-emd:1000x50",
    "cpcc-l2:10000x10",
    "cpcc-fastft:10000x10",
]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_row(row: str, dim: int, memory_mb: float, device: str, threads: int) -> dict:
    """Measure one row in this process (called in a child process)."""
    import torch

    from hierot.correlation import cpcc
    from hierot.distances import class_distances

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from bench_cpcc import balanced_tree

    torch.set_num_threads(threads)
    if row == "baseline":
        return {"row": row, "seconds": 0.0, "peak_mb": peak_mb()}
    what, size = row.split(":")
    classes, samples = (int(v) for v in size.split("x"))
    g = torch.Generator().manual_seed(0)
    y = torch.arange(classes).repeat_interleave(samples)
    y = y[torch.randperm(y.numel(), generator=g)].to(device)
    z = torch.randn(y.numel(), dim, generator=g).to(device)
    tree = balanced_tree(classes).tree_distances().to(device) if what.startswith("cpcc-") else None
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        if tree is not None:
            value = float(cpcc(z, y, tree, what.removeprefix("cpcc-"), memory_mb))
        else:
            value = float(class_distances(z, y, what, memory_mb)[1].mean())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out = {"row": row, "seconds": time.perf_counter() - start, "peak_mb": peak_mb()}
    out["value"] = value
    out["pairs"] = classes * (classes - 1) // 2
    if device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, help="write the table as a results CSV here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_row(args.child, args.dim, args.memory_mb, args.device, args.threads)))
        return
    # here, not at the top: the child processes measure their memory without hierot's imports
    from hierot.results import PrintedTable

    note = (
        f"no gradient, d={args.dim}, memory_mb={args.memory_mb:g}, device={args.device}, "
        f"torch threads={args.threads}; peak RSS of the whole process"
    )
    print(f"# {note}\n")
    table = PrintedTable()
    table.print("| row | pairs | seconds | peak RSS MB | GPU peak MB |")
    table.print("|---|---|---|---|---|")
    for row in ["baseline", *args.rows]:
        cmd = [sys.executable, __file__, "--child", row, "--dim", str(args.dim)]
        cmd += ["--memory-mb", str(args.memory_mb), "--device", args.device]
        cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            table.print(f"| {row} | failed: {done.stderr.strip().splitlines()[-1]} | | | |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        gpu = f"{r['gpu_peak_mb']:.0f}" if "gpu_peak_mb" in r else ""
        table.print(
            f"| {r['row']} | {r.get('pairs', '')} | {r['seconds']:.1f} | {r['peak_mb']:.0f} "
            f"| {gpu} |"
        )
    table.write(args.csv, notes=[note])


if __name__ == "__main__":
    main()
