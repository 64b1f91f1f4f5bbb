import pytest
import torch

from hierot.data import SyntheticDataModule, SyntheticSpec, synthetic_hierarchy
from hierot.data.synthetic import class_names, make_split, mode_separation, split_modes
from hierot.errors import ConfigError


def test_default_tree_has_three_levels_and_24_classes():
    spec = SyntheticSpec()
    tree = synthetic_hierarchy(spec)
    assert tree.num_classes == 24 and tree.depth == 3
    assert tree.leaves == class_names(spec)
    assert tree.leaves[:2] == ["red-disc-solid", "red-disc-hstripes"]
    assert len(tree.level_map(1)[0]) == 3 and len(tree.level_map(2)[0]) == 6
    t = tree.tree_distances()
    assert t[0, 1] == 2 and t[0, 4] == 4 and t[0, 8] == 6  # texture, shape, palette apart


def test_same_seed_same_images_other_seed_other_images():
    spec = SyntheticSpec()
    x1, y1, m1 = make_split(spec, 4, seed=7)
    x2, y2, m2 = make_split(spec, 4, seed=7)
    x3, _, _ = make_split(spec, 4, seed=8)
    assert x1.dtype == torch.uint8 and x1.shape == (96, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)
    assert not torch.equal(x1, x3)
    assert torch.equal(torch.bincount(y1), torch.full((24,), 4))
    assert torch.equal(torch.bincount(m1), torch.full((2,), 48))


def test_a_split_rendered_again_is_an_equal_copy():
    # kept in the process: the second call renders nothing, and what a caller changes in
    # its copy never reaches the next caller's
    from hierot.data.synthetic import _rendered

    spec = SyntheticSpec(palettes=2, shapes=2, textures=2)
    _rendered.cache_clear()
    x1, y1, _ = make_split(spec, 2, seed=3)
    x1[:] = 0
    y1[:] = -1
    x2, y2, _ = make_split(spec, 2, seed=3)
    assert _rendered.cache_info().hits == 1 and _rendered.cache_info().misses == 1
    assert (
        x2.amax() > 0
        and int(y2.min()) == 0
        and torch.equal(torch.bincount(y2), torch.full((8,), 2))
    )
    x3, _, _ = make_split(spec, 2, seed=3, modes_used=[0, 1])  # the same modes, spelt out
    assert torch.equal(x2, x3) and _rendered.cache_info().hits == 2


def test_classes_are_multimodal():
    spec = SyntheticSpec()
    x, y, m = make_split(spec, 40, seed=0)
    # mode centroids of a class lie several times farther apart than its images spread
    assert mode_separation(x, y, m) > 2.0
    x1, y1, m1 = make_split(SyntheticSpec(modes=1), 40, seed=0)
    assert mode_separation(x, y, m) > 2 * mode_separation(x1, y1, (m1 + torch.arange(960)) % 2)


def test_classes_differ_in_pixels_along_the_tree():
    # mean images of sibling classes are closer than those of classes in other palettes
    spec = SyntheticSpec()
    x, y, _ = make_split(spec, 60, seed=1)
    means = torch.stack([x[y == c].float().mean(0).flatten() for c in range(24)])
    d = torch.cdist(means, means)
    assert d[0, 1:4].mean() < d[0, 8:].mean()


def test_data_module_splits_and_normalization():
    dm = SyntheticDataModule(train_per_class=6, val_per_class=2, test_per_class=3, batch_size=16)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (144, 48, 72)
    assert not torch.equal(dm.train_set.tensors[0][:48], dm.val_set.tensors[0])
    images, labels = next(iter(dm.train_dataloader()))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert y is labels
    assert x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
    expected = (images[0, 0, 0, 0].item() / 255 - 0.5) / 0.25
    assert x[0, 0, 0, 0].item() == pytest.approx(expected)
    assert dm.level_names == ["palette", "shape"]
    assert len(dm.train_dataloader()) == 9  # 144 / 16, the short last batch dropped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"palettes": 7}, "palettes=7"), ({"textures": 1}, "textures=1"), ({"noise": 2.0}, "noise")],
)
def test_bad_spec_is_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticSpec(**kwargs)


def test_source_and_target_take_disjoint_halves_of_every_class_modes():
    assert split_modes(4, "source") == [0, 1] and split_modes(4, "target") == [2, 3]
    assert split_modes(3, "source") == [0] and split_modes(3, "target") == [1, 2]
    assert split_modes(2, "all") == [0, 1]
    with pytest.raises(ValueError, match=r"needs data\.modes >= 2"):
        split_modes(1, "target")
    with pytest.raises(ValueError, match="unknown 'holdout'"):
        split_modes(2, "holdout")
    spec = SyntheticSpec(modes=4)
    _, labels, modes = make_split(spec, 8, seed=0, modes_used=[2, 3])
    assert set(modes.tolist()) == {2, 3}
    for c in range(spec.num_classes):  # every class, both of its target modes, evenly
        assert torch.bincount(modes[labels == c], minlength=4).tolist() == [0, 0, 4, 4]


def test_source_is_dark_and_target_light_background_with_two_modes():
    corners = {}
    for split in ("source", "target"):
        dm = SyntheticDataModule(split=split, train_per_class=2, val_per_class=2,
                                 test_per_class=4)  # fmt: skip
        dm.setup("test")
        assert dm.hierarchy.leaves == SyntheticDataModule().hierarchy.leaves  # same classes
        corners[split] = dm.test_set.tensors[0][:, :, 0, 0].float().mean(1) / 255
    assert corners["source"].max() < 0.45 and corners["target"].min() > 0.55


def test_normalized_images_follow_a_true_precision():
    # Lightning casts a batch to bf16-true / 16-true before on_after_batch_transfer, and the
    # normalization makes float32 again: the hook must hand the model its weights' dtype.
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import HalfPrecision, Precision

    dm = SyntheticDataModule(train_per_class=2)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(4)
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)  # no trainer: float32
    for plugin, dtype in (
        (HalfPrecision("bf16-true"), torch.bfloat16),
        (Precision(), torch.float32),
    ):
        dm.trainer = SimpleNamespace(precision_plugin=plugin)
        x, _ = dm.on_after_batch_transfer((images, labels), 0)
        assert x.dtype == dtype
        assert torch.allclose(x.float(), dm.normalize(images), atol=0.05)


def test_every_split_needs_an_image_of_each_mode_it_draws_from():
    with pytest.raises(ConfigError, match=r"^data.val_per_class must be an integer >= 4, got 3$"):
        SyntheticDataModule(modes=4, val_per_class=3)
    with pytest.raises(ConfigError, match=r"data.train_per_class must be an integer >= 2, got 1"):
        SyntheticDataModule(train_per_class=1, split="target", modes=4)  # modes 2 and 3
    assert SyntheticDataModule(train_per_class=1, split="target", modes=2).per_class["train"] == 1
