"""Mistake costs a dataset ships with its tree, read instead of recomputed.

making-better-mistakes ships the LCA heights of tieredImageNet and iNaturalist-19 as
``<dataset>_ilsvrc_distances.pkl.xz``: an lzma-compressed pickle of ``{(a, b): height}``
with one entry per unordered pair of class names. About a quarter of them differ from the
heights recomputed from its own tree file, so a user comparing with its numbers needs those.

Formats, by extension:
- ``.pkl``, ``.pkl.xz``: that pickle. Only plain Python values and numpy scalars are
  unpickled; anything else is refused.
- ``.csv``, ``.tsv``: one ``a,b,distance`` row per pair (a header row is allowed).
"""

from __future__ import annotations

import csv
import io
import lzma
import pickle
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import torch

from hierot.errors import DataError

# What the published pickles need: numpy's scalar reconstruction and nothing else.
_ALLOWED = {
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refuses {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> Mapping[object, object]:
    opener = lzma.open if path.suffix == ".xz" else open
    try:
        with opener(path, "rb") as f:  # type: ignore[operator]
            data = _PlainUnpickler(io.BytesIO(f.read())).load()
    except (pickle.UnpicklingError, lzma.LZMAError, EOFError, ValueError) as e:
        raise DataError(f"data.distances: {path} is not a distance pickle ({e})") from None
    if not isinstance(data, Mapping):
        raise DataError(
            f"data.distances: {path} holds a {type(data).__name__}, not a {{(a, b): distance}} dict"
        )
    return data


def _read_csv(path: Path) -> dict[tuple[str, str], object]:
    delimiter = "\t" if path.suffix == ".tsv" else ","
    pairs: dict[tuple[str, str], object] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f, delimiter=delimiter), start=1):
            if not row:
                continue
            if len(row) != 3:
                raise DataError(
                    f"data.distances: {path}:{line}: expected 3 columns (a, b, distance), "
                    f"got {len(row)}"
                )
            try:
                pairs[(row[0], row[1])] = float(row[2])
            except ValueError:
                if line == 1:
                    continue  # a header row
                raise DataError(
                    f"data.distances: {path}:{line}: distance {row[2]!r} is not a number"
                ) from None
    return pairs


def read_class_distances(path: str | PathLike, classes: Sequence[str]) -> torch.Tensor:
    """(K, K) float32 distances between ``classes`` (0 on the diagonal) from ``path``; every
    pair of distinct classes must be in the file, in either order."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.distances: no such file: {path}")
    suffixes = "".join(path.suffixes[-2:]).lower()
    if suffixes.endswith((".pkl", ".pkl.xz", ".pickle")):
        pairs = _read_pickle(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        pairs = _read_csv(path)
    else:
        raise DataError(f"data.distances: {path}: unknown format (.pkl, .pkl.xz, .csv or .tsv)")
    index = {str(c): i for i, c in enumerate(classes)}
    k = len(classes)
    out = torch.full((k, k), float("nan"))
    for key, value in pairs.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise DataError(f"data.distances: {path}: key {key!r} is not a pair of class names")
        a, b = index.get(str(key[0])), index.get(str(key[1]))
        if a is None or b is None:
            continue  # the file may cover more classes (every node of its tree)
        try:
            out[a, b] = out[b, a] = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(
                f"data.distances: {path}: distance of {key!r} is not a number: {value!r}"
            ) from None
    out.fill_diagonal_(0.0)
    missing = out.isnan().nonzero()
    if missing.numel():
        a, b = (classes[int(i)] for i in missing[0])
        raise DataError(
            f"data.distances: {path} has no distance between '{a}' and '{b}' "
            f"({missing.shape[0] // 2} pairs of the {k} classes missing)"
        )
    return out


def disagreement(shipped: torch.Tensor, tree: torch.Tensor, classes: Sequence[str]) -> str | None:
    """How ``shipped`` distances differ from the ``tree``'s (both (K, K), symmetric): the
    number of class pairs that differ and the first of them (in class-id order), as one
    line; None where they agree."""
    upper = torch.triu(torch.ones_like(shipped, dtype=torch.bool), diagonal=1)
    differ = (shipped != tree) & upper
    n = int(differ.sum())
    if not n:
        return None
    a, b = (int(i) for i in differ.nonzero()[0])
    return (
        f"{n} of {int(upper.sum())} class pairs differ from the tree's LCA heights (first: "
        f"'{classes[a]}' and '{classes[b]}', {float(shipped[a, b]):g} in the file, "
        f"{float(tree[a, b]):g} in the tree)"
    )
