"""The loaders: the batched crop and flip on the device against torchvision's per-image
transform (the same 162 outcomes, drawn with the same distribution, no host sync), its
switch on CIFAR, and the one loader setting of training, evaluation and transfer."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare
from torchvision.transforms import v2

from hierot.config import build, compose_config
from hierot.data.device_augment import crop_flip
from hierot.data.images import crop_padding, train_transform
from hierot.data.synthetic import SyntheticDataModule
from hierot.errors import DataError
from hierot.syncs import SyncCounter

from helpers.files import write_cifar100

SIZE, PAD = 32, 4  # CIFAR's crop_flip: 32 px, padding 4, so 9 x 9 offsets x 2 flips
CELLS = (2 * PAD + 1) ** 2 * 2


def position_image(size: int = SIZE) -> torch.Tensor:
    """(3, S, S) uint8: channel 0 holds the row + 1, channel 1 the column + 1 (0 is the
    padding), so every crop offset and flip gives a different image."""
    i = torch.arange(1, size + 1, dtype=torch.uint8)
    return torch.stack(
        [i[:, None].expand(size, size), i[None, :].expand(size, size), torch.zeros(size, size)]
    ).to(torch.uint8)


def outcome(images: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """(N,) cell of each cropped, flipped ``position_image``: (top, left, flip) read off its
    centre pixels, numbered ``(top * (2 pad + 1) + left) * 2 + flip``."""
    c = images.shape[-1] // 2
    top = images[:, 0, c, c].long() - (c + 1) + pad
    flip = (images[:, 1, c, c + 1].long() < images[:, 1, c, c].long()).long()
    column = torch.where(flip.bool(), images.shape[-1] - 1 - c, c)
    left = images[:, 1, c, c].long() - (column + 1) + pad
    return (top * (2 * pad + 1) + left) * 2 + flip


def every_cpu_outcome(image: torch.Tensor, pad: int = PAD) -> torch.Tensor:
    """(CELLS, C, S, S): torchvision's pad, crop and flip of ``image`` at every (top, left,
    flip), in ``outcome``'s order."""
    size = image.shape[-1]
    padded = v2.functional.pad(image, [pad])
    out = []
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = v2.functional.crop(padded, top, left, size, size)
            out += [crop, v2.functional.horizontal_flip(crop)]
    return torch.stack(out)


def test_every_device_crop_is_one_of_torchvisions_exactly():
    image = position_image()
    cpu = every_cpu_outcome(image)
    assert torch.equal(outcome(cpu), torch.arange(CELLS))  # the decoder reads every cell
    out = crop_flip(image.expand(2000, -1, -1, -1), PAD, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (2000, 3, SIZE, SIZE)
    assert torch.equal(out, cpu[outcome(out)])  # pixel for pixel the CPU path's image
    # any image, any channels: the same cells as torchvision's on a random picture
    noise = torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8)
    both = torch.stack([image, noise]).expand(500, -1, -1, -1, -1)  # (B, V=2, C, H, W)
    out = crop_flip(both, PAD, torch.Generator().manual_seed(1))
    cells = outcome(out[:, 0])
    assert torch.equal(out[:, 0], cpu[cells])
    assert not torch.equal(cells, outcome(out[:, 1]))  # each view draws its own crop


def test_device_crops_and_flips_are_drawn_as_the_cpu_transform_draws_them():
    # 6480 draws of each path over the 162 (top, left, flip) cells, 40 expected per cell.
    # Both uniform, and alike: p > 0.001 for a right implementation (with fixed seeds the
    # test is reproducible); a missing offset (18 empty cells) gives chi2 ~ 720 on 161
    # degrees of freedom and a flip rate off by 0.05 ~ 65 more, p < 1e-9 and 1e-3.
    n = 40 * CELLS
    image = position_image()
    torch.manual_seed(0)
    cpu_tf = train_transform(SIZE, "crop_flip")
    cpu = outcome(torch.stack([cpu_tf(image) for _ in range(n)]))
    device = outcome(crop_flip(image.expand(n, -1, -1, -1), PAD, torch.Generator().manual_seed(0)))
    counts = torch.stack([torch.bincount(c, minlength=CELLS) for c in (cpu, device)])
    assert counts.shape == (2, CELLS)  # no cell outside the 162
    for row in counts:
        assert chisquare(row.numpy()).pvalue > 1e-3
    assert chi2_contingency(counts.numpy()).pvalue > 1e-3
    # the marginals: offsets 0..8 each 1/9 (sd 0.004), flips 1/2 (sd 0.006), within 4 sd
    for cells in (cpu, device):
        top, left, flip = cells // 2 // 9, cells // 2 % 9, cells % 2
        for part in (top, left):
            share = torch.bincount(part, minlength=9).float() / n
            assert (share - 1 / 9).abs().max() < 4 * (1 / 9 * 8 / 9 / n) ** 0.5
        assert abs(flip.float().mean() - 0.5) < 4 * (0.25 / n) ** 0.5


def test_the_crop_padding_is_an_eighth_of_the_side():
    assert [crop_padding(s) for s in (8, 32, 64, 224)] == [1, 4, 8, 28]
    out = crop_flip(position_image(8).expand(400, -1, -1, -1), 1, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(outcome(out, 1), minlength=18) > 0, torch.ones(18).bool())


def test_the_device_augmentation_reads_nothing_back_to_the_host():
    images = torch.randint(0, 256, (64, 2, 3, SIZE, SIZE), dtype=torch.uint8)
    with SyncCounter() as syncs:
        crop_flip(images, PAD)
    assert syncs.total == 0, syncs.counts


def cifar(tmp_path, *overrides, n=5):
    fine = [f"c{i}" for i in range(6)]
    write_cifar100(tmp_path, fine, ["a", "b", "c"], [0, 0, 1, 1, 2, 2], n=n)
    cfg = compose_config(["data=cifar100", f"data.root={tmp_path}", *overrides])
    return build(cfg.data, "data")


def test_cifar_device_augment_moves_the_crop_and_flip_to_training_batches(tmp_path):
    dm = cifar(tmp_path, "data.device_augment=true", "data.batch_size=8", n=20)
    dm.setup("fit")
    images = dm.train_set.images
    assert torch.equal(dm.train_set[3][0], images[3])  # the loader no longer augments
    batch = images[:8]
    labels = torch.arange(8)
    plugin = SimpleNamespace(convert_input=lambda x: x)  # float32, as Precision() does
    dm.trainer = trainer = SimpleNamespace(training=True, precision_plugin=plugin)
    torch.manual_seed(0)
    with SyncCounter() as syncs:
        x, y = dm.on_after_batch_transfer((batch, labels), 0)
    assert syncs.total == 0 and y is labels
    torch.manual_seed(0)
    expected = dm.normalize(crop_flip(batch, 4))
    assert torch.equal(x, expected) and not torch.equal(x, dm.normalize(batch))
    trainer.training = False  # validation, test, predict: as they are
    x, _ = dm.on_after_batch_transfer((batch, labels), 0)
    assert torch.equal(x, dm.normalize(batch))
    # off (the default): the loader augments, the hook only normalizes
    plain = cifar(tmp_path)
    plain.setup("fit")
    assert plain.train_device_transform is None and plain.train_set.transform is plain.train_tf
    plain.trainer = SimpleNamespace(training=True, precision_plugin=plugin)
    assert torch.equal(plain.on_after_batch_transfer((batch, labels), 0)[0], dm.normalize(batch))


@pytest.mark.parametrize("augment", ["crop_flip_rotate", "none"])
def test_device_augment_refuses_transforms_it_cannot_replace(tmp_path, augment):
    message = f"replaces data.augment=crop_flip only, got {augment} "
    with pytest.raises(DataError, match=rf"^data\.device_augment: {message}"):
        cifar(tmp_path, "data.device_augment=true", f"data.augment={augment}")
    with pytest.raises(DataError, match=r"^data\.device_augment must be true or false, got 'yes'$"):
        cifar(tmp_path, "data.device_augment=yes")


def test_evaluation_and_transfer_loaders_have_the_training_loaders_settings(monkeypatch):
    from hierot import transfer

    dm = SyntheticDataModule(train_per_class=2, val_per_class=2, test_per_class=2, num_workers=2)
    dm.setup()
    train = dm.train_dataloader()
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.eval_loader(dm.test_set)):
        settings = (loader.num_workers, loader.persistent_workers, loader.pin_memory)
        assert settings == (2, True, torch.cuda.is_available())
        assert settings == (train.num_workers, train.persistent_workers, train.pin_memory)
    # transfer's features come through the data module's loader (no worker started here)
    dm.num_workers = 0
    used = []
    own = dm.eval_loader
    monkeypatch.setattr(dm, "eval_loader", lambda dataset: used.append(dataset) or own(dataset))
    z, y = transfer.features(torch.nn.Flatten(), dm.test_set, dm, "cpu")
    assert used == [dm.test_set] and z.shape == (48, 3 * 32 * 32)
    assert torch.equal(y, dm.test_set.tensors[1])


@pytest.mark.slow
def test_a_cifar_run_augments_its_training_batches_on_the_device(tmp_path, monkeypatch):
    from hierot.data import cifar as cifar_module
    from hierot.train import train

    calls = []

    def counted(images, padding):
        calls.append((tuple(images.shape), images.dtype, padding))
        return crop_flip(images, padding)

    monkeypatch.setattr(cifar_module, "crop_flip", counted)
    write_cifar100(tmp_path, [f"c{i}" for i in range(6)], ["a", "b", "c"], [0, 0, 1, 1, 2, 2])
    cfg = compose_config(["debug=fast", "data=cifar100", f"data.root={tmp_path}",
                          "data.device_augment=true", "trainer.limit_train_batches=2",
                          f"output_dir={tmp_path / 'run'}"])  # fmt: skip
    train(cfg)
    # the two training batches only; the validation and test batches are left as they are
    assert calls == [((8, 3, 32, 32), torch.uint8, 4)] * 2


@pytest.mark.slow
def test_the_loader_benchmark_writes_its_tables(tmp_path):
    from hierot.results import read_results

    script = Path(__file__).parents[1] / "scripts" / "bench_loaders.py"
    csv = tmp_path / "loaders.csv"
    run = subprocess.run(
        [sys.executable, str(script), "--quick", "--csv", str(csv)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    meta, columns, rows = read_results(csv)
    assert "lower bounds" in meta["note"]
    assert columns[:3] == ["what", "px", "workers"]
    loaders = [r for r in rows if r["what"].startswith("loader")]
    assert {r["workers"] for r in loaders} == {"0", "1"}
    assert all(float(r["images/s"]) > 0 for r in rows)
    _, _, gpu = read_results(tmp_path / "loaders_gpu.csv")
    assert {r["model"] for r in gpu} >= {"resnet18", "resnet50", "vit_base_patch16_224"}
    for r in gpu:
        low, high = (float(v) for v in r["estimated GPU images/s"].split("-"))
        assert 0 < low < high
        assert int(r["workers needed"].split("-")[0]) >= 1
