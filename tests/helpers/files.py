"""Tiny datasets written in the real on-disk formats (CIFAR pickles, class folders of PNGs)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from PIL import Image


def _pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _pixels(labels: list[int], seed: int) -> torch.Tensor:
    # Class-dependent colour plus noise, flattened like the official release (R, G, B planes).
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(labels)[:, None].float() * 23 % 256
    return ((base + 40 * torch.rand(len(labels), 3072, generator=g)) % 256).to(torch.uint8)


def write_cifar100(root: Path, fine: list[str], coarse: list[str], parent: list[int], n=4):
    folder = root / "cifar-100-python"
    _pickle(folder / "meta", {b"fine_label_names": [f.encode() for f in fine],
                              b"coarse_label_names": [c.encode() for c in coarse]})  # fmt: skip
    for split, seed in (("train", 0), ("test", 1)):
        labels = [i for i in range(len(fine)) for _ in range(n)]
        _pickle(folder / split, {
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))],
            b"batch_label": split.encode(),
            b"fine_labels": labels,
            b"coarse_labels": [parent[i] for i in labels],
            b"data": _pixels(labels, seed).numpy(),
        })  # fmt: skip
    return folder


def write_cifar10(root: Path, names: list[str], n=2):
    folder = root / "cifar-10-batches-py"
    _pickle(folder / "batches.meta", {b"label_names": [x.encode() for x in names],
                                      b"num_cases_per_batch": n * len(names)})  # fmt: skip
    for i, split in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        labels = [c for c in range(len(names)) for _ in range(n)]
        _pickle(folder / split, {b"batch_label": split.encode(), b"labels": labels,
                                 b"data": _pixels(labels, i).numpy(),
                                 b"filenames": [b"x.png"] * len(labels)})  # fmt: skip
    return folder


def write_folders(root: Path, splits: dict[str, list[str]], n=3, size=(20, 28)) -> Path:
    for split, classes in splits.items():
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = torch.full((*size, 3), (c * 37 + i * 5) % 256, dtype=torch.uint8)
                Image.fromarray(img.numpy()).save(d / f"img{i}.png")
    return root


def write_hub_cache(home: Path, hub_id: str, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face hub cache under ``home`` (what ``HF_HOME`` points at) holding one
    model repository's ``model.safetensors`` at its ``main`` revision, the layout that
    ``huggingface_hub`` writes when it downloads timm's weights."""
    from safetensors.torch import save_file

    repo = home / "hub" / f"models--{hub_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot
