import json
import os
import subprocess
import sys

import pytest
import timm
import torch

from hierot.config import CONFIG_DIR, build, compose_config
from hierot.data.module import default_workers
from hierot.errors import ConfigError
from hierot.logs import DropNoise
from hierot.models import create_backbone
from hierot.train import build_run, train

from helpers.files import write_hub_cache

# 24 classes x 4 training images: a batch of 32 holds most classes, so CPCC is defined.
TINY = ["debug=tiny", "trainer.max_epochs=3"]


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, out: str = "run"):
        return compose_config([*TINY, f"output_dir={tmp_path / out}", *overrides])

    return make


def read_metrics(path):
    return json.loads((path / "metrics.json").read_text())


@pytest.mark.slow
# every shipped backbone config but ViT-L, which has its own lighter test below
@pytest.mark.parametrize(
    "backbone",
    sorted(p.stem for p in (CONFIG_DIR / "backbone").glob("*.yaml") if p.stem != "vit_l16"),
)
def test_fast_dev_run_every_backbone(tmp_path, backbone):
    # In a process of its own: a ViT-B step with AdamW holds ~2 GB, which would stay in the
    # test process's peak memory.
    metrics = train_in_subprocess(tmp_path, f"backbone={backbone}", "trainer.fast_dev_run=true")
    assert metrics["backbone"] == compose_config([f"backbone={backbone}"]).backbone.name
    assert metrics["steps"] == 1 and -1 <= metrics["test/cpcc"] <= 1


@pytest.mark.slow
def test_fast_dev_run_vit_large(tmp_path):
    # ViT-L/16 is 300M parameters: one step of two images in bf16 with plain SGD keeps this
    # affordable on CPU (2.7 GB peak here; 10.8 GB in float32 with AdamW's states). It also
    # runs the batch through a "true" precision: the images must follow the weights' dtype.
    metrics = train_in_subprocess(
        tmp_path, "backbone=vit_l16", "trainer.fast_dev_run=true", "data.batch_size=2",
        "trainer.precision=bf16-true", "optimizer=sgd", "optimizer.momentum=0",
        "optimizer.nesterov=false",
    )  # fmt: skip
    assert metrics["backbone"] == "vit_large_patch16_224" and metrics["steps"] == 1


def train_in_subprocess(tmp_path, *overrides):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "debug=tiny", *overrides,
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return read_metrics(tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("dist", sorted(p.stem for p in (CONFIG_DIR / "dist").glob("*.yaml")))
def test_fast_dev_run_every_distance(make_cfg, tmp_path, dist):
    result = train(make_cfg(f"dist={dist}", "trainer.fast_dev_run=true"))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["dist"] == dist and result == pytest.approx(metrics["test/cpcc"])
    assert list((tmp_path / "run").rglob("*.ckpt")) == []  # a dry run writes no checkpoint
    assert {
        "test/cpcc",
        "test/cpcc_l2",
        "test/acc_fine",
        "test/acc_palette",
        "test/acc_shape",
    } <= set(metrics)
    if dist == "l2" or dist == "none":
        assert metrics["test/cpcc"] == pytest.approx(metrics["test/cpcc_l2"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective", sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml"))
)
def test_fast_dev_run_every_objective(make_cfg, tmp_path, objective):
    # with CPCC on top (the default dist=fastft, lam=1)
    train(make_cfg(f"objective={objective}", "trainer.fast_dev_run=true"))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["objective"] == objective and metrics["dist"] == "fastft"
    assert (
        metrics[f"train/{objective}"] > 0 and metrics["train/loss"] > metrics[f"train/{objective}"]
    )
    assert -1 <= metrics["test/cpcc"] <= 1 and 0 <= metrics["test/acc_fine"] <= 1


@pytest.mark.slow
def test_hypstructure_settings_train(make_cfg, tmp_path):
    # HypStructure's recipe on top of cross-entropy: hyperbolic CPCC over every node, centred
    train(make_cfg("dist=hyperbolic", "cpcc.nodes=all", "cpcc.center=0.01",
                   "trainer.fast_dev_run=true"))  # fmt: skip
    metrics = read_metrics(tmp_path / "run")
    assert metrics["dist"] == "hyperbolic" and -1 <= metrics["test/cpcc"] <= 1
    assert metrics["train/loss"] > metrics["train/ce"] > 0


@pytest.mark.slow
def test_fast_dev_run_bf16_mixed_precision(make_cfg, tmp_path):
    train(make_cfg("trainer.precision=bf16-mixed", "trainer.fast_dev_run=true", "dist=sinkhorn"))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["test/cpcc"] is not None and -1 <= metrics["test/cpcc"] <= 1


@pytest.mark.slow
def test_outputs_and_resume_from_checkpoint(make_cfg, tmp_path):
    limits = [
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    first = make_cfg(*limits, "trainer.max_epochs=1", out="first")
    train(first)
    out = tmp_path / "first"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "checkpoints" / "best-epoch00.ckpt").is_file()
    assert (out / "config.yaml").is_file() and (out / "logs" / "metrics.csv").is_file()
    metrics = read_metrics(out)
    assert (metrics["epochs"], metrics["steps"]) == (1, 2)
    assert metrics["best_checkpoint"].endswith("best-epoch00.ckpt")
    assert metrics["lam"] == 1.0 and metrics["data.batch_size"] == 32

    resumed = make_cfg(
        *limits, "trainer.max_epochs=2", f"ckpt_path={out}/checkpoints/last.ckpt", out="second"
    )
    train(resumed)
    metrics = read_metrics(tmp_path / "second")
    # two steps of the first epoch come from the checkpoint, two more are trained now
    assert (metrics["epochs"], metrics["steps"]) == (2, 4)
    ckpt = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_tensorboard_logger(make_cfg, tmp_path):
    train(make_cfg("logger=tensorboard", "trainer.max_epochs=1", "trainer.limit_train_batches=1"))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_mlflow_logger_writes_a_local_store_without_a_server(make_cfg, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(make_cfg("logger=mlflow", "trainer.max_epochs=1"))
    metrics = read_metrics(tmp_path / "run")
    client = mlflow.tracking.MlflowClient(f"file:{tmp_path / 'run' / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "hierot"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["test/cpcc"] == pytest.approx(metrics["test/cpcc"], abs=1e-6)
    # the command line's settings and the model's, side by side without clashing
    assert run.data.params["dist.method"] == "fastft" and run.data.params["dist"] == "fastft"


@pytest.mark.slow
def test_bad_value_inside_train_is_a_config_error(make_cfg):
    with pytest.raises(ConfigError, match="lam must be a number >= 0"):
        train(make_cfg("lam=-1"))


def test_local_pretrained_weights(tmp_path):
    source = timm.create_model("resnet18", num_classes=0)
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    loaded = create_backbone("resnet18", stem="standard", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    vit = timm.create_model("vit_small_patch16_224", num_classes=0)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    small = create_backbone("vit_small_patch16_224", img_size=32, weights=str(tmp_path / "vit.pth"))
    assert small.pos_embed.shape == (1, 5, 384)  # resized from 197 tokens to 2 x 2 + 1
    assert torch.equal(small.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)
    torch.save({"junk": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        create_backbone("resnet18", weights=str(tmp_path / "junk.pth"))
    (tmp_path / "notes.pth").write_text("not weights")  # timm alone says "KeyError: 110"
    with pytest.raises(ConfigError, match=r"cannot read .*notes\.pth as a PyTorch or safet"):
        create_backbone("resnet18", weights=str(tmp_path / "notes.pth"))


def test_stems_change_resolution():
    x = torch.zeros(2, 3, 32, 32)
    maps = {}
    for stem in ("standard", "small", "cifar"):
        model = create_backbone("resnet18", stem=stem)
        maps[stem] = model.forward_features(x).shape[-1]
    assert maps == {"standard": 1, "small": 2, "cifar": 4}
    with pytest.raises(ConfigError, match="applies to ResNets"):
        create_backbone("vit_small_patch16_224", stem="small", img_size=32)


@pytest.mark.slow
def test_main_job_as_a_subprocess(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *[o for o in TINY if "progress_bar" not in o],
         "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = read_metrics(tmp_path / "run")
    assert "test/cpcc" in run.stdout and "test/mistake_severity" in run.stdout
    for key in ("test/cpcc", "test/cpcc_l2", "test/acc_fine", "test/acc_palette",
                "test/acc_shape", "test/acc_top5", "test/mistake_severity", "dist", "lam",
                "data.batch_size"):  # fmt: skip
        assert key in metrics, key
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    # Not a terminal: no progress bar, one line per epoch, no third-party noise.
    assert "\r" not in run.stdout and "it/s" not in run.stdout
    assert "epoch 1/1 (" in run.stdout and "val/acc_fine" in run.stdout
    assert "litlogger" not in run.stdout + run.stderr
    assert "LeafSpec" not in run.stderr and "logging interval" not in run.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    for text in ("training resnet18 on SyntheticDataModule",
                 "data: 64 of 96 train (trainer.limit_train_batches=2) / 48 val images;",
                 "epoch 1/1 (", "test/acc_fine", f"outputs: {tmp_path / 'run'}"):  # fmt: skip
        assert text in log, text


@pytest.mark.slow
def test_val_cpcc_every_n_epochs_over_a_class_subset(make_cfg, tmp_path):
    import csv

    train(make_cfg("trainer.max_epochs=3", "cpcc.val_every=2", "cpcc.val_classes=10"))
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc_fine")]
    with_cpcc = [int(r["epoch"]) for r in rows if r.get("val/cpcc")]
    # every 2nd epoch (index 1) and the last one; accuracy every epoch
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and with_cpcc == [1, 2]
    metrics = read_metrics(tmp_path / "run")
    assert -1 <= metrics["test/cpcc"] <= 1


@pytest.mark.slow
def test_how_often_val_cpcc_runs_does_not_change_training(make_cfg, tmp_path):
    """dist=swd draws its projections at random (``seed: null``): validation's draws come
    from their own generator, so the batches and losses of training are the same whether
    val/cpcc runs every epoch or every second one, and so is the test."""
    import csv

    run = ["dist=swd", "seed=5", "trainer.deterministic=true", "trainer.log_every_n_steps=1"]
    losses, tests = [], []
    for every in (1, 2):
        out = f"every{every}"
        train(make_cfg(*run, f"cpcc.val_every={every}", out=out))
        with open(tmp_path / out / "logs" / "metrics.csv") as f:
            rows = csv.DictReader(f)
            losses.append([float(r["train/loss"]) for r in rows if r.get("train/loss")])
        tests.append(read_metrics(tmp_path / out))
    assert len(losses[0]) == 9 and losses[0] == losses[1]
    for key in ("test/cpcc", "test/loss", "test/acc_fine"):
        assert tests[0][key] == tests[1][key], key


@pytest.mark.slow
def test_emd_pairs_stopped_at_the_iteration_limit_are_counted_in_the_log(make_cfg, caplog):
    import logging
    import re
    import warnings

    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(make_cfg("dist=emd", "dist.options.max_iter=1", "trainer.max_epochs=1",
                       "data.test_per_class=4"))  # fmt: skip
    limit = [w for w in caught if "max_iter=1" in str(w.message)]
    assert len(limit) == 1 and re.search(r"classes \d+ and \d+", str(limit[0].message))
    lines = [r.getMessage() for r in caplog.records if "class pairs" in r.getMessage()]
    # 3 steps of ~20 of the 24 classes, then the test: hundreds of pairs (the validation's
    # pairs of 2 samples each happen to finish in one pivot)
    counts = [int(re.search(r"(\d+) class pairs", line).group(1)) for line in lines]
    assert len(lines) == 2 and all(c > 100 for c in counts), lines
    assert "during training and validation" in lines[0] and "during the test" in lines[1]
    assert all("max_iter=1" in line for line in lines)


def test_worker_count_follows_the_cores():
    assert [default_workers(c) for c in (1, 2, 4, 64)] == [0, 1, 3, 8]


def test_noise_filter_drops_only_known_third_party_messages():
    import logging

    def record(message):
        return logging.LogRecord("lightning", logging.INFO, "x.py", 1, message, None, None)

    noise = DropNoise()
    assert not noise.filter(record("💡 Tip: For seamless cloud logging and tracking, try it"))
    assert noise.filter(record("epoch 1/3 (2 s): val/acc_fine 0.5"))


@pytest.mark.slow
def test_wandb_logger_runs_offline_without_network(tmp_path):
    pytest.importorskip("wandb")
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *TINY, "trainer.max_epochs=1",
         "trainer.limit_train_batches=1", "logger=wandb", "logger.offline=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp_path / "cfg")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    (record,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    assert record.stat().st_size > 1000
    assert read_metrics(tmp_path / "run")["status"] == "completed"


@pytest.mark.slow
def test_pretrained_weights_come_from_the_hub_cache_offline(tmp_path):
    # A cache as huggingface_hub leaves it, with weights we know; the hub is never reached.
    source = timm.create_model("resnet18")
    torch.nn.init.constant_(source.conv1.weight, 0.125)
    hub_id = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    write_hub_cache(tmp_path / "hf", hub_id, source.state_dict())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    probe = (
        "from hierot.models import create_backbone; "
        "m = create_backbone('resnet18', pretrained=True, stem='standard'); "
        "print(float(m.conv1.weight.mean()), float(m.layer1[0].conv1.weight.std()))"
    )
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    conv1, layer1 = map(float, run.stdout.split())
    assert conv1 == 0.125
    assert layer1 == pytest.approx(float(source.layer1[0].conv1.weight.detach().std()), rel=1e-6)

    # An empty cache offline: one line naming the model and the way out, no run directory.
    env["HF_HOME"] = str(tmp_path / "empty")
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", *TINY, "backbone.pretrained=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"hierot: error: backbone.pretrained: no pretrained weights for resnet18 ({hub_id} on "
        "the Hugging Face hub): not in the local cache (HF_HOME), and the hub is offline"
    )
    assert last.endswith("or give a file with backbone.weights=FILE")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_checkpoints_kept_can_be_cut_to_the_best_weights(make_cfg, tmp_path):
    train(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=1"))
    full = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert full == ["best-epoch00.ckpt", "last.ckpt"]
    size = (tmp_path / "run" / "checkpoints" / "last.ckpt").stat().st_size
    lean = ["checkpoint.save_last=false", "checkpoint.weights_only=true"]
    train(make_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=1", *lean, out="lean"))
    (only,) = (tmp_path / "lean" / "checkpoints").iterdir()
    assert only.name == "best-epoch00.ckpt"
    state = torch.load(only, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in state and "state_dict" in state
    assert only.stat().st_size < 0.6 * size  # SGD's momentum buffers are half of a full one
    assert read_metrics(tmp_path / "lean")["best_checkpoint"] == str(only)


def test_vit_conv_stem_keeps_the_tokens_and_convolves_first():
    x = torch.zeros(2, 3, 32, 32)
    for patch, strides in ((16, 4), (8, 3)):
        model = create_backbone("vit_small_patch16_224", stem="conv", img_size=32, patch_size=patch)
        convs = [m for m in model.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
        assert [c.stride[0] for c in convs] == [2] * strides + [1]
        assert convs[-1].out_channels == model.embed_dim
        assert model.forward_features(x).shape[1] == (32 // patch) ** 2 + 1  # + class token
        assert model(x).shape == (2, model.num_features)
    with pytest.raises(ConfigError, match="apply to ViTs"):
        create_backbone("resnet18", stem="conv")
    with pytest.raises(ConfigError, match="power-of-two patch"):
        create_backbone("vit_small_patch16_224", stem="conv", img_size=36, patch_size=12)
    # 30 px: four stride-2 convolutions give 2x2 tokens, the position embeddings 1x1
    with pytest.raises(ConfigError, match=r"divisible by the patch \(16 px\), got 30x30"):
        create_backbone("vit_small_patch16_224", stem="conv", img_size=30)


def test_monitor_and_trainer_settings_fail_before_training(make_cfg):
    with pytest.raises(ConfigError) as info:
        build_run(make_cfg("monitor=val/nothing"))
    assert str(info.value).startswith(
        "callbacks.model_checkpoint: monitor 'val/nothing' is not logged every epoch; this "
        "run logs train/acc_fine, "
    )
    assert "val/cpcc, val/cpcc_l2" in str(info.value)
    # val/cpcc every second epoch: a checkpoint cannot watch it
    with pytest.raises(ConfigError, match="monitor 'val/cpcc' is not logged every epoch"):
        build_run(make_cfg("monitor=val/cpcc", "cpcc.val_every=2"))
    _, model, trainer = build_run(make_cfg("monitor=val/acc_shape", "cpcc.val_every=2"))
    assert trainer.checkpoint_callback.monitor == "val/acc_shape"
    assert "train/cpcc" in model.monitorable() and "val/cpcc" not in model.monitorable()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^trainer: No supported gpu backend found!$"):
            build_run(make_cfg("trainer.accelerator=gpu"))


@pytest.mark.slow
def test_epoch_line_gives_train_means_over_the_epoch(make_cfg, tmp_path, caplog):
    import csv
    import logging
    import re

    with caplog.at_level(logging.INFO, logger="hierot.logs"):
        train(make_cfg("trainer.max_epochs=1", "trainer.log_every_n_steps=1"))
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        steps = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert len(steps) == 3  # 96 images in batches of 32
    logged = float(re.search(r"train/loss (\S+)", line).group(1))
    assert logged == pytest.approx(sum(steps) / 3, abs=1e-4)
    assert "val/acc_fine" in line and "val/cpcc" in line


@pytest.mark.slow
def test_run_records_its_tree_and_data(make_cfg, tmp_path):
    from hierot.hierarchy import Hierarchy

    cfg = make_cfg("trainer.fast_dev_run=true")
    train(cfg)
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    expected = build(cfg.data, "data").hierarchy
    assert data == {
        "dataset": "SyntheticDataModule",
        "split": "all",
        "images": {"train": 96, "val": 48, "test": 48},
        "classes": expected.leaves,
    }
    tree = Hierarchy.from_file(tmp_path / "run" / "hierarchy.json")
    assert tree.leaves == expected.leaves  # consecutive ids per subtree: same order as is
    assert torch.equal(tree.tree_distances(), expected.tree_distances())
    assert not (tmp_path / "run" / "hierarchy.txt").exists()  # unit weights: JSON suffices


@pytest.mark.slow
def test_lam_is_set_in_one_place_and_recorded_as_trained(tmp_path):
    """``lam=0.5`` trains with 0.5 and records 0.5; ``model.lam=0.5`` (the model's copy of
    ``lam``) is refused with the key to set, instead of training with one value and
    recording another."""
    metrics = train_in_subprocess(tmp_path, "lam=0.5")
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    assert metrics["lam"] == 0.5 and checkpoint["hyper_parameters"]["lam"] == 0.5
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "debug=tiny", "model.lam=0.5"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "hierot: error: model.lam follows lam: set lam=0.5 instead (metrics.json and the sweep "
        "summary record lam)"
    ]


def test_model_copies_of_top_level_settings_are_refused():
    from hierot.config import check_config, model_aliases

    assert model_aliases()["lam"] == "lam" and model_aliases()["dist"] == "dist.method"
    for key, value in [("lam", 0.5), ("dist", "l2"), ("top_k", 3), ("memory_mb", 64)]:
        with pytest.raises(ConfigError, match=rf"^model\.{key} follows .*: set .*={value} instead"):
            check_config(compose_config([f"model.{key}={value}"]))
    check_config(compose_config(["model.head_weight_decay=0.1"]))  # the model's own key


@pytest.mark.slow
@pytest.mark.slow
def test_a_trained_run_loads_in_python_and_reproduces_its_test_accuracy(make_cfg, tmp_path):
    import hierot

    train(make_cfg())
    metrics = read_metrics(tmp_path / "run")
    model = hierot.load_trained(metrics["best_checkpoint"])
    assert not model.training
    data = hierot.run_datamodule(metrics["best_checkpoint"])
    data.setup("test")
    correct = total = 0
    with torch.no_grad():
        for images, labels in data.test_dataloader():
            z, logits = model(data.normalize(images))
            correct += int((logits.argmax(1) == labels).sum())
            total += len(labels)
    assert z.shape[1] == model.backbone.num_features and logits.shape[1] == 24
    assert correct / total == pytest.approx(metrics["test/acc_fine"], abs=1e-6)


@pytest.mark.slow
def test_one_way_to_load_a_trained_module(make_cfg, tmp_path):
    """evaluate and transfer load through checkpoints.load_module: Lightning's
    load_from_checkpoint with the saved hyper-parameters, the run's own tree, no optimizer."""
    from hierot.checkpoints import load_module, run_hierarchy

    train(make_cfg("lam=0.5", "objective=mtl", "model.head_weight_decay=0.01"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    tree = run_hierarchy(ckpt)
    assert tree is not None and tree.num_classes == 24
    backbone = build(compose_config([]).backbone, "backbone")  # the run's: the default
    module = load_module(ckpt, "ckpt", backbone)
    assert module.lam == 0.5 and module.objective_name == "mtl"
    assert module.hparams["head_weight_decay"] == 0.01
    assert module.hparams["level_names"] == ["palette", "shape"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in module.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    with pytest.raises(ConfigError, match="loaded to be evaluated"):
        module.configure_optimizers()
