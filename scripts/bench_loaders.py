"""Images/s of the training loaders alone, per number of workers, next to the training step's
images/s, and the workers a GPU would need at its FLOP-estimated step rate.

A loader is timed as training reads it: the data module's own ``train_dataloader()`` (its
sampler, augmentation, collation and worker processes), iterated with no model, the first
batch (the workers' start) left out. Three datasets: CIFAR-100 in its official pickle format
(written by ``tests/helpers/files.py``, read by ``Cifar100DataModule``) at 32 px with
``crop_flip``, also with ``data.device_augment=true`` (the loader only indexes; the crop and
flip of a batch is timed on its own); the embedded synthetic data (no augmentation); class
folders of JPEGs (written here, about ImageNet's size) through ``ImageFolderDataModule`` at
224 px with its ``resized_crop``. The step is ResNet-18 forward + backward + SGD at 32 px on
random images, on this CPU.

The second table (``--csv``'s name with ``_gpu``) divides an H100's estimated images/s by
the images/s of one worker measured here: the FLOPs of a training image are counted
(``torch.utils.flop_counter``, forward + backward), the GPU's sustained throughput on each
model is an assumption (``H100_TFLOPS``, as ``docs/results/estimates.md`` assumes).

    python scripts/bench_loaders.py --csv docs/results/bench_loaders.csv   # 3-5 minutes
    python scripts/bench_loaders.py --quick                                # seconds (tests)
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from hierot.data import Cifar100DataModule, ImageFolderDataModule, SyntheticDataModule
from hierot.data.device_augment import crop_flip
from hierot.data.images import crop_padding
from hierot.data.module import HierarchyDataModule
from hierot.models import create_backbone
from hierot.results import command_line, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.files import write_cifar100  # noqa: E402 -- the tests' writer of the real format

# An H100's assumed sustained bf16 throughput (TFLOP/s of counted FLOPs: 2 per multiply-add)
# on each model, low and high; its dense peak is 989. Small convolutions at 32 px use a small
# share of it (estimates.md's ResNet-18 recipe: 20 PFLOPs in 10-20 minutes), ResNet-50 at 224
# px more (2 500-5 000 images/s), a ViT-B's large matrix products the most.
H100_TFLOPS = {"resnet18": (17.0, 33.0), "resnet50": (60.0, 120.0),
               "vit_base_patch16_224": (200.0, 400.0)}  # fmt: skip
# The shortest an eager training step takes however few its FLOPs (the kernel launches of a
# ResNet-18's forward, backward and optimizer step): 2-4 ms, at the batch below.
STEP_FLOOR_S = (0.002, 0.004)
GPU_BATCH = 128
# (model, stem, px, the loader rows whose one-worker images/s feed it)
GPU_ROWS = [
    ("resnet18", "standard", 32, ("cifar crop_flip", "cifar device_augment")),
    ("resnet18", "small", 32, ("cifar crop_flip", "cifar device_augment")),
    ("resnet18", "cifar", 32, ("cifar crop_flip", "cifar device_augment")),
    ("resnet50", "standard", 224, ("jpeg resized_crop",)),
    ("vit_base_patch16_224", "patch", 224, ("jpeg resized_crop",)),
]
LOADERS = {
    "cifar crop_flip": "loader: CIFAR-100 in memory, crop_flip in the loader",
    "cifar device_augment": "loader: CIFAR-100 in memory, device_augment (no CPU augmentation)",
    "synthetic": "loader: synthetic (embedded, in memory, no augmentation)",
    "jpeg resized_crop": "loader: class-folder JPEGs, decode + resized_crop",
}


def loader_rate(dm: HierarchyDataModule, seconds: float, windows: int = 3) -> float:
    """Images/s of ``dm``'s training loader, epoch after epoch, the first batch left out: the
    best of ``windows`` windows of ``seconds / windows`` (and 3 batches) each, the least
    disturbed by other work on the machine."""
    loader = dm.train_dataloader()
    batches = iter(loader)
    next(batches)
    rates = []
    for _ in range(windows):
        images, done, start = 0, 0, time.perf_counter()
        while done < 3 or time.perf_counter() - start < seconds / windows:
            try:
                x, _ = next(batches)
            except StopIteration:
                batches = iter(loader)
                continue
            images, done = images + x.shape[0], done + 1
        rates.append(images / (time.perf_counter() - start))
    del batches, loader  # stops the persistent workers before the next measurement
    gc.collect()
    return max(rates)


def write_jpegs(root: Path, count: int, classes: int, seed: int = 0) -> float:
    """``count`` JPEGs in ``root/train/<class>/`` (one per class in ``root/test/``) and a
    hierarchy CSV: colour fields with noise, 400-500 x 300-400 px at quality 90, about
    ImageNet's pixels and bytes (its mean is about 400 x 350 px, 110 KB); the mean KB."""
    g = torch.Generator().manual_seed(seed)
    sizes = []
    for i in range(count + classes):
        split, c = ("train", i % classes) if i < count else ("test", i - count)
        w = int(torch.randint(400, 501, (), generator=g))
        h = int(torch.randint(300, 401, (), generator=g))
        field = torch.rand(1, 3, 24, 32, generator=g) * 255
        img = torch.nn.functional.interpolate(field, size=(h, w), mode="bicubic")[0]
        img = (img + 20 * torch.randn(img.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        folder = root / split / f"c{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path, quality=90)
        sizes.append(path.stat().st_size)
    rows = "".join(f"g{c % 4},c{c:02d}\n" for c in range(classes))
    (root / "tree.csv").write_text(rows)
    return sum(sizes) / len(sizes) / 1024


def loader_rows(
    args: argparse.Namespace, tmp: Path
) -> tuple[list[dict[str, object]], dict[str, float], list[str]]:
    """The loader rows, the one-worker images/s of each loader and the notes on the data."""
    fine = [f"class{i:02d}" for i in range(100)]
    write_cifar100(tmp / "cifar", fine, [f"super{i:02d}" for i in range(20)],
                   [i // 5 for i in range(100)], n=args.cifar_per_class)  # fmt: skip
    kb = write_jpegs(tmp / "jpegs", args.jpegs, 20)
    made = {
        "cifar crop_flip": lambda w: Cifar100DataModule(root=str(tmp / "cifar"), num_workers=w),
        "cifar device_augment": lambda w: Cifar100DataModule(
            root=str(tmp / "cifar"), num_workers=w, device_augment=True
        ),
        "synthetic": lambda w: SyntheticDataModule(num_workers=w, train_per_class=args.synthetic),
        "jpeg resized_crop": lambda w: ImageFolderDataModule(
            root=str(tmp / "jpegs"),
            hierarchy=str(tmp / "jpegs" / "tree.csv"),
            image_size=224,
            val_split=None,
            batch_size=64,
            num_workers=w,
        ),
    }
    rows, per_worker = [], {}
    for key, build in made.items():
        for workers in args.workers:
            dm = build(workers)
            dm.setup("fit")
            seconds = args.seconds * (2 if key.startswith("jpeg") else 1)
            rate = loader_rate(dm, seconds)
            if workers == 1:
                per_worker[key] = rate
            rows.append(row(LOADERS[key], 224 if key.startswith("jpeg") else 32, workers,
                            rate, dm.batch_size))  # fmt: skip
    notes = [
        f"CIFAR-100 format: {100 * args.cifar_per_class} images (90 % train); synthetic: "
        f"{24 * args.synthetic} training images; JPEGs: {args.jpegs} of 400-500 x 300-400 px, "
        f"quality 90, {kb:.0f} KB on average."
    ]
    return rows, per_worker, notes


def row(what: str, px: int, workers: int | None, rate: float, batch: int) -> dict[str, object]:
    per = f"{rate / workers:.0f}" if workers else ""
    return {"what": what, "px": px, "workers": "" if workers is None else workers,
            "batch": batch, "images/s": f"{rate:.0f}", "images/s per worker": per}  # fmt: skip


def timed(step, repeats: int) -> float:
    """The shortest of ``repeats`` calls of ``step``, in seconds (one warm-up call first)."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def training_step(stem: str, batch: int):
    """One ResNet-18 SGD step at 32 px on random images (a new one each call)."""
    model = torch.nn.Sequential(create_backbone("resnet18", stem=stem), torch.nn.Linear(512, 100))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def step_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    """The batched device augmentation's images/s on one core of this CPU, and the training
    step's on ``args.threads``."""
    images = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8)
    seconds = timed(lambda: crop_flip(images, crop_padding(32)), 50)
    what = "device_augment's crop + flip of a uint8 batch, batched (1 core of this CPU)"
    rows = [row(what, 32, None, 128 / seconds, 128)]
    torch.set_num_threads(args.threads)
    for stem in args.stems:
        seconds = timed(training_step(stem, args.step_batch), args.steps)
        what = f"step: ResNet-18 {stem} stem, forward + backward + SGD (this CPU)"
        rows.append(row(what, 32, None, args.step_batch / seconds, args.step_batch))
    return rows


def training_flops(name: str, stem: str, px: int) -> float:
    """FLOPs of one training image (forward + backward) of a backbone, counted."""
    kwargs = {"img_size": px, "global_pool": "avg"} if name.startswith("vit") else {}
    model = create_backbone(name, stem=stem, **kwargs)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, px, px)).sum().backward()
    return counter.get_total_flops() / 2


def gpu_rate(flops: float, tflops: tuple[float, float]) -> tuple[float, float]:
    """(low, high) images/s of an H100 at ``tflops``, no step shorter than ``STEP_FLOOR_S``."""
    low = GPU_BATCH / max(GPU_BATCH * flops / (tflops[0] * 1e12), STEP_FLOOR_S[1])
    high = GPU_BATCH / max(GPU_BATCH * flops / (tflops[1] * 1e12), STEP_FLOOR_S[0])
    return low, high


def span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def gpu_rows(per_worker: dict[str, float]) -> list[dict[str, object]]:
    rows = []
    for name, stem, px, loaders in GPU_ROWS:
        flops = training_flops(name, stem, px)
        low, high = gpu_rate(flops, H100_TFLOPS[name])
        for key in loaders:
            one = per_worker[key]
            rows.append({
                "model": name, "stem": stem, "px": px,
                "GFLOPs per training image (counted)": f"{flops / 1e9:.2f}",
                "assumed H100 TFLOP/s": "-".join(f"{t:.0f}" for t in H100_TFLOPS[name]),
                "estimated GPU images/s": f"{low:.0f}-{high:.0f}",
                "loader": LOADERS[key].removeprefix("loader: "),
                "images/s of 1 worker (here)": f"{one:.0f}",
                "workers needed": span(math.ceil(low / one), math.ceil(high / one)),
            })  # fmt: skip
    return rows


def print_table(rows: Sequence[dict[str, object]]) -> None:
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |", flush=True)


def parse(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="worker counts to time (must include 1)")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=6.0, help="per in-memory loader row")
    parser.add_argument("--cifar-per-class", type=int, default=50)
    parser.add_argument("--synthetic", type=int, default=400, help="training images per class")
    parser.add_argument("--jpegs", type=int, default=2000)
    parser.add_argument("--stems", nargs="+", default=["standard", "small", "cifar"])
    parser.add_argument("--step-batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of the step (loaders: one)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    parser.add_argument("--csv", type=Path, help="the results CSV (and <name>_gpu.csv)")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.seconds, args.cifar_per_class, args.synthetic = [0, 1], 0.3, 6, 20
        args.jpegs, args.stems, args.step_batch, args.steps = 40, ["standard"], 16, 1
    if 1 not in args.workers:
        parser.error("--workers must include 1 (the per-worker images/s the GPU table divides by)")
    return args


def main() -> None:
    args = parse()
    # one thread, as in a DataLoader worker: the per-core rate (and no spinning threads on a
    # busy machine)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="hierot-loaders-") as tmp:
        rows, per_worker, notes = loader_rows(args, Path(tmp))
    rows += step_rows(args)
    print_table(rows)
    gpu = gpu_rows(per_worker)
    print()
    print_table(gpu)
    if args.csv is None:
        return
    notes += [
        "The loaders alone (the training DataLoader, no model): the best of 3 windows of "
        f"{args.seconds / 3:.2g} s (JPEGs twice that) after the first batch, one torch thread "
        "in the main process as in a worker, no CUDA here so no pinned memory. Ran beside "
        "other work on a shared 2-core machine: the images/s are lower bounds, and the "
        "2-worker rows measure that contention, not how workers scale. The steps: ResNet-18 "
        f"with a 100-class linear head, batch {args.step_batch}, random images, torch threads "
        f"{args.threads}, the fastest of {args.steps} steps; the batched crop + flip the "
        "fastest of 50."
    ]
    write_results(args.csv, rows, command_line(), notes)
    gpu_note = (
        "Estimates, not measurements: an H100's images/s is its assumed sustained bf16 "
        "throughput over the counted FLOPs of a training image (forward + backward), at "
        f"batch {GPU_BATCH} and no step under {STEP_FLOOR_S[0] * 1e3:.0f}-"
        f"{STEP_FLOOR_S[1] * 1e3:.0f} ms; workers needed is that over one worker's images/s "
        "measured on this shared 2-core CPU (a lower bound, so the workers an upper bound)."
    )
    write_results(args.csv.with_name(f"{args.csv.stem}_gpu.csv"), gpu, command_line(), [gpu_note])


if __name__ == "__main__":
    main()
