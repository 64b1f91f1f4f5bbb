"""data.distances: LCA heights shipped as making-better-mistakes' pickles or as CSV rows."""

import lzma
import pickle

import numpy as np
import pytest
import torch

from hierot.data import SyntheticDataModule
from hierot.errors import DataError
from hierot.hierarchy.distance_files import read_class_distances
from tests.helpers.trees import balanced

CLASSES = ["n01", "n02", "n03"]


def write_mbm(path, pairs):
    """The layout of making-better-mistakes' data/*_ilsvrc_distances.pkl.xz: an lzma
    pickle of {(a, b): distance}, one entry per unordered pair (numpy ints as values)."""
    with lzma.open(path, "wb") as f:
        pickle.dump({k: np.int64(v) for k, v in pairs.items()}, f)


def test_reads_the_mbm_pickle_in_either_pair_order_and_ignores_other_nodes(tmp_path):
    path = tmp_path / "tiered_imagenet_ilsvrc_distances.pkl.xz"
    write_mbm(path, {("n01", "n02"): 1, ("n03", "n01"): 4, ("n02", "n03"): 4, ("n01", "n99"): 7})
    got = read_class_distances(path, CLASSES)
    assert got.tolist() == [[0, 1, 4], [1, 0, 4], [4, 4, 0]]


def test_reads_csv_rows_with_a_header(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b,distance\nn01,n02,1\nn01,n03,2.5\nn02,n03,2.5\n")
    assert read_class_distances(path, CLASSES).tolist() == [[0, 1, 2.5], [1, 0, 2.5], [2.5, 2.5, 0]]


def test_bad_files_are_one_line_errors_naming_file_and_pair(tmp_path):
    def refused(path):
        with pytest.raises(DataError) as info:
            read_class_distances(path, CLASSES)
        assert "\n" not in str(info.value)
        return str(info.value)

    short = tmp_path / "short.pkl.xz"
    write_mbm(short, {("n01", "n02"): 1, ("n01", "n03"): 2})
    assert refused(short) == (
        f"data.distances: {short} has no distance between 'n02' and 'n03' "
        "(1 pairs of the 3 classes missing)"
    )
    assert (
        refused(tmp_path / "none.csv") == f"data.distances: no such file: {tmp_path / 'none.csv'}"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("n01,n02,1\nn01,n03,far\n")
    assert refused(bad) == f"data.distances: {bad}:2: distance 'far' is not a number"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({("n01", "n02"): torch.nn.Linear}))
    assert refused(evil).startswith(f"data.distances: {evil} is not a distance pickle (refuses ")
    other = tmp_path / "d.json"
    other.write_text("{}")
    assert "unknown format" in refused(other)


def test_the_data_module_reads_the_file_instead_of_the_tree(tmp_path):
    data = SyntheticDataModule(train_per_class=2, val_per_class=2, test_per_class=2)
    tree = data.hierarchy
    assert torch.equal(data.lca_heights(), tree.lca_heights())
    leaves = tree.leaves
    shipped = tree.lca_heights().clone()
    shipped[0, 1] = shipped[1, 0] = 5  # a dataset whose file disagrees with its tree
    path = tmp_path / "own.pkl.xz"
    write_mbm(
        path,
        {(leaves[i], leaves[j]): int(shipped[i, j]) for i in range(len(leaves)) for j in range(i)},
    )
    data = SyntheticDataModule(
        train_per_class=2, val_per_class=2, test_per_class=2, distances=str(path)
    )
    assert torch.equal(data.lca_heights(), shipped)
    assert balanced([2]).lca_heights().tolist() == [[0, 1], [1, 0]]


def test_a_file_that_disagrees_with_the_tree_is_one_warning_with_the_count(tmp_path, caplog):
    # making-better-mistakes issue #3: its tieredImageNet file differs from its own tree for
    # 50383 of the 184528 class pairs; the run follows the file and says so, once
    tree = SyntheticDataModule(train_per_class=2, val_per_class=2, test_per_class=2).hierarchy
    leaves, heights = tree.leaves, tree.lca_heights()

    def run(shipped):
        path = tmp_path / f"d{len(list(tmp_path.iterdir()))}.pkl.xz"
        pairs = {(leaves[i], leaves[j]): int(shipped[i, j]) for i in range(len(leaves))
                 for j in range(i)}  # fmt: skip
        write_mbm(path, pairs)
        data = SyntheticDataModule(
            train_per_class=2, val_per_class=2, test_per_class=2, distances=str(path)
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="hierot.data.module"):
            assert torch.equal(data.lca_heights(), shipped)
            data.lca_heights()
        return path, [r.getMessage() for r in caplog.records]

    assert run(heights)[1] == []  # a file that agrees: no warning
    shipped = heights.clone()
    shipped[2, 5] = shipped[5, 2] = 9
    shipped[3, 4] = shipped[4, 3] = 7
    path, warnings = run(shipped)
    pairs = len(leaves) * (len(leaves) - 1) // 2
    assert warnings == [
        f"data.distances: {path}: 2 of {pairs} class pairs differ from the tree's LCA heights "
        f"(first: '{leaves[2]}' and '{leaves[5]}', 9 in the file, {int(heights[2, 5])} in the "
        "tree)"
    ]
