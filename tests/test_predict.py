"""``hierot.predict``: a checkpoint's predictions for image files, as a CSV.

The fast tests hold the reading of a batch's logits (top-k, each level's marginal, the
decoded paths) to hand-computed numbers, the image listing, the unreadable-file handling
and the config's one-line errors on a run directory made without training. The slow ones
train a tiny run, write its test images as PNG and JPEG files and compare the CSV with the
model's own logits on the same images (``load_trained``)."""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from hierot.checkpoints import load_trained, run_datamodule, run_hierarchy
from hierot.config import compose_config
from hierot.data import ImageFolderDataModule, SyntheticDataModule
from hierot.data.images import read_image
from hierot.errors import ConfigError, DataError
from hierot.hierarchy import Hierarchy
from hierot.models.module import level_keys
from hierot.predict import (
    ImageFiles,
    batch_predictions,
    csv_columns,
    decodings,
    image_files,
    precheck,
    predict,
)

TINY = ["debug=tiny", "trainer.limit_train_batches=2"]
# animal -> dog, cat; vehicle -> car, bus, bike: LCA height 1 between siblings, 2 across
TREE = Hierarchy.from_paths(
    [["animal", "dog"], ["animal", "cat"], ["vehicle", "car"], ["vehicle", "bus"],
     ["vehicle", "bike"]]
)  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png(path: Path, size: tuple[int, int] = (20, 28), value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 2 * value % 256, 3 * value % 256)).save(path)
    return path


# -- reading a batch's logits ------------------------------------------------------------


def test_a_batch_gives_top_k_level_marginals_and_decoded_paths_by_hand():
    probs = torch.tensor(
        [
            [0.30, 0.25, 0.20, 0.15, 0.10],  # animal 0.55: the marginal agrees with top-1
            [0.35, 0.05, 0.25, 0.20, 0.15],  # top-1 dog, but vehicle holds 0.60
        ]
    )
    maps = {1: TREE.level_map(1)[1]}
    # CRM's expected LCA cost, row 2: dog .05 + 2 x .60 = 1.25, car 2 x .40 + .20 + .15 =
    # 1.15, bus 1.20, bike 1.25, cat 1.55: car; row 1: dog 1.15, cat 1.20, car 1.35: dog
    found = batch_predictions(probs.log(), 3, maps, ["argmax", "crm"], TREE.lca_heights())
    assert found["top"].tolist() == [[0, 1, 2], [0, 2, 3]]
    assert torch.allclose(found["prob"], torch.tensor([[0.30, 0.25, 0.20], [0.35, 0.25, 0.20]]))
    assert found["level1"].tolist() == [0, 1] and found["crm"].tolist() == [0, 2]
    columns = csv_columns(["a.png", "b.png"], found, TREE, level_keys(TREE, ["kind"]),
                          ["argmax", "crm"])  # fmt: skip
    assert list(columns) == [
        "path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3", "kind", "fine",
        "argmax_kind", "argmax_fine", "crm_kind", "crm_fine",
    ]  # fmt: skip
    rows = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    assert rows[0] == {
        "path": "a.png", "class_1": "dog", "prob_1": "0.3", "class_2": "cat", "prob_2": "0.25",
        "class_3": "car", "prob_3": "0.2", "kind": "animal", "fine": "dog",
        "argmax_kind": "animal", "argmax_fine": "dog", "crm_kind": "animal", "crm_fine": "dog",
    }  # fmt: skip
    # each level's own best guess (vehicle) need not be the top class's ancestor (animal);
    # a decoding's columns are one path of the tree
    assert [rows[1][k] for k in ("class_1", "kind", "fine", "argmax_kind", "crm_kind",
                                 "crm_fine")] == ["dog", "vehicle", "dog", "animal", "vehicle",
                                                  "car"]  # fmt: skip


def test_decode_takes_null_a_name_or_a_list():
    assert decodings(None) == [] and decodings("crm") == ["crm"]
    assert decodings(OmegaConf.create({"d": ["crm", "argmax", "crm"]}).d) == ["crm", "argmax"]
    with pytest.raises(ConfigError, match=r"decode\[1\]: unknown decoding 'best'; available"):
        decodings(["crm", "best"])
    with pytest.raises(ConfigError, match="decode must be null, argmax, crm, hie or a list, got 3"):
        decodings(3)


# -- image files -------------------------------------------------------------------------


def test_a_folder_a_list_or_one_image_names_the_files(tmp_path, caplog):
    folder = tmp_path / "images"
    b, a, c = png(folder / "b.png"), png(folder / "a.JPG"), png(folder / "sub" / "c.webp")
    png(folder / ".hidden" / "d.png")
    (folder / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="hierot.predict"):
        assert image_files(folder) == [(str(a), a), (str(b), b), (str(c), c)]
    assert "1 file in" in caplog.text and "left out: notes.txt" in caplog.text
    assert image_files(b) == [(str(b), b)]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# chosen\nimages/sub/c.webp\n\n  {a}  \n")  # relative to the list
    assert image_files(listing) == [("images/sub/c.webp", c), (str(a), a)]
    listing.write_text("images/b.png\nimages/gone.png\n")
    with pytest.raises(DataError) as info:
        image_files(listing)
    assert str(info.value) == f"images: {listing}:2: no such file: {folder / 'gone.png'}"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(DataError, match=r"images: no image files in .*empty \(\.jpg"):
        image_files(tmp_path / "empty")
    binary = tmp_path / "photo.heic"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 8)
    with pytest.raises(DataError, match=r"is neither a folder, an image .* nor a readable text"):
        image_files(binary)


def test_an_unreadable_file_is_a_zero_image_and_its_error_not_a_stopped_loader(tmp_path):
    good = png(tmp_path / "good.png", size=(40, 30))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])  # truncated after the header
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    data = SyntheticDataModule(image_size=16)
    files = ImageFiles([good, bad, text], data.file_transform(), 16)
    image, why = files[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and why == ""
    assert int(image[0, 0, 0]) == 90  # a plain image stays plain through the resize
    for i, path in ((1, bad), (2, text)):
        image, why = files[i]
        assert image.shape == (3, 16, 16) and int(image.abs().sum()) == 0
        assert why.startswith(f"{path}: corrupt or unreadable image (") and "\n" not in why


def test_file_data_predict_through_their_own_test_transform(tmp_path):
    # 40 x 60 image: resized to 36 on its shorter side, then the central 32; the default
    # (no eval_resize) resizes straight to 32
    image = torch.arange(40 * 60, dtype=torch.float32).view(1, 40, 60).expand(3, 40, 60)
    image = (image % 251).to(torch.uint8)
    folders = ImageFolderDataModule(hierarchy="h.json", image_size=32, eval_resize=36)
    assert folders.file_transform() is folders.eval_tf
    assert folders.file_transform()(image).shape == (3, 32, 32)
    plain = SyntheticDataModule(image_size=32).file_transform()(image)
    assert plain.shape == (3, 32, 32)
    assert not torch.equal(plain, folders.file_transform()(image))


# -- the command line's checks ---------------------------------------------------------


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run directory as training leaves it, without training: its config and a
    checkpoint holding no weights (what the config checks look at)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    cfg = compose_config([*TINY, f"output_dir={out}"])
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    torch.save({"state_dict": {}}, out / "checkpoints" / "last.ckpt")
    return out / "checkpoints" / "last.ckpt"


def test_predict_errors_are_one_config_line(fake_run, tmp_path):
    png(tmp_path / "images" / "a.png")
    given = [f"ckpt={fake_run}", f"images={tmp_path / 'images'}"]

    def refused(*args: str) -> str:
        with pytest.raises(ConfigError) as info:
            precheck(list(args))
        assert "\n" not in str(info.value)
        return str(info.value)

    precheck(given)  # a good command line passes
    precheck([*given, "decode=[argmax,crm]", "top_k=3", "output=out/p.csv", "features=true"])
    assert refused(*given, "topk=3") == "topk: unknown key (did you mean top_k?)"
    assert refused(*given, "+k=3").startswith("unknown key 'k': nothing reads +k=...; top-level")
    assert refused(f"ckpt={fake_run}") == (
        "images: give a folder of images, an image or a list, images=PATH"
    )
    assert refused(given[1]) == "ckpt: give a checkpoint file, ckpt=PATH"
    missing = tmp_path / "nothing"
    assert refused(given[0], f"images={missing}") == f"images: no such folder or file: {missing}"
    for args, message in [
        (["top_k=0"], "top_k must be an integer >= 1, got 0"),
        (["decode=greedy"], "decode: unknown decoding 'greedy'; available: argmax, crm, hie"),
        (["crm_cost=height"], "crm_cost: unknown cost 'height'; available: lca, path"),
        (["features=maybe"], "features must be true or false, got 'maybe'"),
        (["skip_unreadable=1"], "skip_unreadable must be true or false, got 1"),
        (["output=p.tsv"], "output must be a .csv path (or null), got 'p.tsv'"),
        (["batch_size=0"], "batch_size must be an integer >= 1, got 0"),
        (["num_workers=-1"], "num_workers must be an integer >= 0, got -1"),
        (["device=tpu"], "device must be auto, cpu or cuda, got 'tpu'"),
        ([f"output={tmp_path / 'images' / 'a.png' / 'p.csv'}"], "output: cannot write "),
    ]:
        assert refused(*given, *args).startswith(message), args
    moved = tmp_path / "moved.ckpt"
    moved.write_bytes(fake_run.read_bytes())
    assert refused(f"ckpt={moved}", given[1]) == (
        f"ckpt: {moved} has no config.yaml of its run (<run>/checkpoints/)"
    )


# -- a trained run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, folder) of a tiny trained run and 16 of its test images written as
    files: 12 PNG (lossless: the run's own pixels) and 4 JPEG in a subfolder."""
    from hierot.train import train

    out = tmp_path_factory.mktemp("run")
    train(compose_config([*TINY, f"output_dir={out}"]))
    ckpt = out / "checkpoints" / "last.ckpt"
    data = run_datamodule(ckpt)
    data.setup("test")
    folder = out / "images"
    for i in range(16):
        pixels = data.test_set[i][0].permute(1, 2, 0).numpy()
        name = f"{i:02d}.png" if i < 12 else f"jpeg/{i:02d}.jpg"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    return ckpt, folder


def model_outputs(ckpt: Path, files: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of ``files`` computed directly: decoded, normalised as the run's
    data, through ``load_trained``'s module."""
    module, data = load_trained(ckpt), run_datamodule(ckpt)
    x = torch.stack([read_image(f) for f in files])
    with torch.no_grad():
        return module(data.normalize(x))


@pytest.mark.slow
def test_predictions_are_the_models_own_on_the_same_images(trained, tmp_path, caplog):
    ckpt, folder = trained
    out = tmp_path / "p" / "predictions.csv"
    cfg = compose_config(
        [f"ckpt={ckpt}", f"images={folder}", f"output={out}", "decode=[argmax,crm]",
         "features=true", "batch_size=5", "num_workers=0", f"output_dir={tmp_path}"],
        config_name="predict",
    )  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert predict(cfg) == out
    assert f"predictions: {out} (16 images)" in caplog.text and "16/16 images" in caplog.text
    rows = read_csv(out)
    files = sorted(folder.rglob("*.png")) + sorted(folder.rglob("*.jpg"))
    assert [r["path"] for r in rows] == [str(f) for f in sorted(files)]
    z, logits = model_outputs(ckpt, [Path(r["path"]) for r in rows])
    tree = run_hierarchy(ckpt)
    probs = logits.softmax(dim=1)
    assert [r["class_1"] for r in rows] == [tree.leaves[int(i)] for i in logits.argmax(1)]
    for row, p in zip(rows, probs, strict=True):
        ranked = [tree.index(row[f"class_{r}"]) for r in range(1, 6)]
        got = torch.tensor([float(row[f"prob_{r}"]) for r in range(1, 6)])
        assert torch.allclose(got, p[ranked], rtol=1e-5, atol=1e-7)
        assert got.sum() <= 1 + 1e-5 and torch.all(got[:-1] >= got[1:])
        assert row["fine"] == row["class_1"] == row["argmax_fine"]
        for way in ("argmax", "crm"):  # a decoded class and its ancestors: one path
            assert [row[f"{way}_{lvl}"] for lvl in ("palette", "shape", "fine")] == (
                tree.path(row[f"{way}_fine"])[1:]
            )
        for level, name in ((1, "palette"), (2, "shape")):  # the summed probabilities' best
            concepts, fine_to_level = tree.level_map(level)
            summed = [float(p[fine_to_level == c].sum()) for c in range(len(concepts))]
            assert row[name] == concepts[summed.index(max(summed))]
    assert np.allclose(np.load(out.with_suffix(".npy")), z.numpy(), atol=1e-5)


@pytest.mark.slow
def test_unreadable_files_are_skipped_on_request_and_listed(trained, tmp_path, caplog):
    ckpt, folder = trained
    broken = tmp_path / "broken.png"
    broken.write_bytes((folder / "00.png").read_bytes()[:80])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / '00.png'}\nbroken.png\n{folder / '01.png'}\n")
    cfg = compose_config(
        [f"ckpt={ckpt}", f"images={listing}", "skip_unreadable=true", "num_workers=0",
         f"output_dir={tmp_path / 'out'}"],
        config_name="predict",
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        out = predict(cfg)
    assert out == tmp_path / "out" / "predictions.csv"
    assert [r["path"] for r in read_csv(out)] == [str(folder / "00.png"), str(folder / "01.png")]
    unreadable = tmp_path / "out" / "predictions_unreadable.txt"
    assert f"skipped 1 unreadable file (listed in {unreadable}): broken.png" in caplog.text
    assert unreadable.read_text().startswith(f"{broken}: corrupt or unreadable image (")


@pytest.mark.slow
def test_a_corrupt_file_stops_the_command_in_one_line_naming_it(trained, tmp_path):
    ckpt, folder = trained
    images = tmp_path / "images"
    images.mkdir()
    for name in ("00.png", "01.png"):
        (images / name).write_bytes((folder / name).read_bytes())
    corrupt = images / "02.png"
    corrupt.write_text("a text file named like an image")
    run = subprocess.run(
        [sys.executable, "-m", "hierot.predict", f"ckpt={ckpt}", f"images={images}",
         "num_workers=1", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        f"hierot: error: {corrupt}: corrupt or unreadable image (cannot identify image file "
        f"'{corrupt}'); nothing written (skip_unreadable=true predicts the other images and "
        f"lists the unreadable ones)"
    ]
    assert not (tmp_path / "out").exists()  # the run directory held nothing: removed
