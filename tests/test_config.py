import datetime
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import torch

from hierot.arguments import check_arguments
from hierot.cli import dropped_groups, run_checked
from hierot.config import (
    CONFIG_DIR,
    check_added_keys,
    check_config,
    check_target_arguments,
    compose_config,
    one_line,
    sweep_variants,
)
from hierot.errors import ConfigError


@pytest.mark.slow  # composes every option of every group
def test_every_group_option_is_shipped_and_composes():
    # a new option (one yaml) is picked up here without editing this test
    groups = sorted(
        p.name
        for p in CONFIG_DIR.iterdir()
        if p.is_dir() and p.name not in ("hydra", "__pycache__")
    )
    assert {"backbone", "data", "debug", "dist", "experiment", "optimizer"} <= set(groups)
    for group in groups:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        assert options, group
        for option in options:
            if group == "ood":  # hierot.evaluate's group: a data config as the OOD set
                cfg = compose_config(["ckpt=x.ckpt", f"ood={option}"], config_name="evaluate")
                check_target_arguments(cfg.ood, "ood")
                continue
            # staged objectives (curriculum, supcon) need an epoch for every stage: 3 is too few
            extra = ["trainer.max_epochs=10"] if group == "objective" else []
            check_config(compose_config([f"{group}={option}", *extra]))


def test_paper_cifar100_recipe_is_the_authors_settings():
    # uiuctml/OTCPCC: dataset/cifar100/pre.json {"epochs": 200, "optimizer": {"lr": 0.1,
    # "momentum": 0.9, "weight_decay": 0.0005}, "scheduler": {"step_size": 60, "gamma": 0.2}},
    # pretrain.py --batch_size 1024 --lamb 1 --height 2, cmd/pretrain.sh --cpcc fft, a
    # ResNet-18 with a 3x3 stride-1 stem and no max-pool, trained on the source split.
    cfg = compose_config(["experiment=paper_cifar100", "data.root=/data"])
    check_config(cfg)
    assert cfg.data._target_ == "hierot.data.Cifar100DataModule"
    assert (cfg.data.split, cfg.data.height, cfg.data.batch_size) == ("source", 2, 1024)
    assert (cfg.backbone.name, cfg.backbone.stem) == ("resnet18", "cifar")
    assert (cfg.dist.method, cfg.lam, cfg.trainer.max_epochs) == ("fastft", 1.0, 200)
    opt = cfg.optimizer
    assert (opt._target_, opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (
        "torch.optim.SGD", 0.1, 0.9, 5e-4, False)  # fmt: skip
    assert [m * 200 for m in cfg.scheduler.milestones] == pytest.approx([60, 120, 180])
    assert (cfg.scheduler.gamma, cfg.scheduler.warmup) == (0.2, 0.0)
    # the command line still wins over the recipe
    assert compose_config(["experiment=paper_cifar100", "lam=0.5"]).lam == 0.5


# uiuctml/OTCPCC pre.json per dataset: epochs, lr, momentum (torch's 0 where unset), weight
# decay, StepLR step and gamma (torch's 0.1 where unset); batch 1024 and ResNet-18 for all.
PAPER = {
    "cifar10": (100, 0.01, 0.9, 5e-4, 60, 0.1),
    "living17": (450, 0.01, 0.0, 1e-4, 150, 0.1),
    "nonliving26": (450, 0.01, 0.0, 1e-4, 150, 0.1),
    "entity13": (300, 0.01, 0.0, 1e-4, 100, 0.1),
    "entity30": (300, 0.01, 0.0, 1e-4, 100, 0.1),
    "inat": (120, 0.1, 0.9, 5e-4, 60, 0.2),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_are_the_authors_settings(name):
    epochs, lr, momentum, wd, step, gamma = PAPER[name]
    cfg = compose_config([f"experiment=paper_{name}", "data.root=/data"])
    assert (cfg.data.split, cfg.data.batch_size, cfg.backbone.name) == ("source", 1024,
                                                                       "resnet18")  # fmt: skip
    assert (cfg.dist.method, cfg.lam, cfg.trainer.max_epochs) == ("fastft", 1.0, epochs)
    opt = cfg.optimizer
    assert (opt.lr, opt.momentum, opt.weight_decay, opt.nesterov) == (lr, momentum, wd, False)
    # StepLR fires at every multiple of the step before the end; the per-step schedule
    # rounds fraction x total steps, so with 7 steps an epoch it fires at the same steps
    steps = 7 * epochs
    fired = [round(m * steps) for m in cfg.scheduler.milestones]
    assert fired == [7 * e for e in range(step, epochs, step)]
    assert (cfg.scheduler.gamma, cfg.scheduler.warmup) == (gamma, 0.0)
    if name == "cifar10":
        assert cfg.backbone.stem == "cifar" and cfg.data._target_.endswith("Cifar10DataModule")
        # dataset/cifar10/data.py's Normalize
        assert list(cfg.data.std) == [0.2023, 0.1994, 0.2010]
    elif name == "inat":
        # dataset/inat/data.py: class under phylum, RandomResizedCrop(224), Resize(256)
        assert (cfg.data.fine_rank, list(cfg.data.ranks)) == ("class", ["phylum"])
        assert (cfg.data.augment, cfg.data.eval_resize) == ("imagenet", 256)
        assert list(cfg.data.mean) == [0.466, 0.471, 0.380]
    else:
        assert cfg.backbone.stem == "standard" and cfg.data.image_size == 224
        assert (cfg.data.subset, cfg.data.classes, cfg.data.height) == (name, "superclass", 2)
        # robustness' ImageNet transforms, unnormalized, as the authors' BREEDS loaders
        assert (cfg.data.augment, cfg.data.eval_resize) == ("robustness", 256)
        assert list(cfg.data.mean) == [0, 0, 0] and list(cfg.data.std) == [1, 1, 1]


def test_repository_conf_is_the_package_conf():
    assert (Path(__file__).parents[1] / "conf").resolve() == CONFIG_DIR.resolve()


def test_defaults_and_group_coupling():
    cfg = compose_config([])
    assert (cfg.lam, cfg.seed, cfg.data.batch_size) == (1.0, 0, 128)
    assert cfg.dist.method == "fastft" and cfg.backbone.name == "resnet18"
    assert cfg.backbone.stem == "standard"  # the synthetic data's suggestion
    assert cfg.optimizer._target_ == "torch.optim.SGD"
    vit = compose_config(["backbone=vit_b16"])
    assert vit.optimizer._target_ == "torch.optim.AdamW" and vit.backbone.img_size == 32
    # the small-image ViT recipe: conv stem (the synthetic data's suggestion), mean pooling
    assert (vit.backbone.stem, vit.backbone.global_pool, vit.optimizer.lr) == ("conv", "avg", 1e-4)
    assert compose_config(["backbone=vit_b16", "optimizer=sgd"]).optimizer.lr == 0.1
    assert compose_config(["dist=sinkhorn", "dist.options.reg=0.5"]).dist.options.reg == 0.5
    trainer = compose_config(["trainer.limit_train_batches=2", "trainer.precision=bf16-mixed"])
    assert trainer.trainer.limit_train_batches == 2 and trainer.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backbone=resnet19"], "unknown backbone 'resnet19'; available: resnet18, resnet34"),
        (
            ["dist=wasserstein"],
            "unknown dist 'wasserstein'; available: emd, fastft, hyperbolic, l1, l2",
        ),
        (["lam=-0.5"], "lam must be a number >= 0, got -0.5"),
        (["lam=much"], "lam must be a number >= 0, got 'much'"),
        (["dist.method=kl"], "dist.method: unknown distance 'kl'"),
        (["+dist.options.reg=1"], "class distance 'fastft' has no option 'reg'"),
        (["dist=sinkhorn", "dist.options.reg=0"], "dist.options: sinkhorn: reg must be > 0"),
        (["dist=sinkhorn", "dist.options.reg_scale=max"], "reg_scale must be one of mean, none"),
        (["dist=sinkhorn", "dist.options.max_iter=0"], "max_iter must be an integer >= 1"),
        (["dist=emd", "dist.options.max_iter=-1"], "emd: max_iter must be an integer >= 1"),
        (["dist.options.weights=heavy"], "fastft: weights must be one of uniform, far, near"),
        (["dist=swd", "+dist.options.weights=far"], "class distance 'swd' has no option"),
        (["cpcc.memory_mb=0"], "cpcc.memory_mb must be a number of megabytes > 0, got 0"),
        (["cpcc.val_every=0"], "cpcc.val_every must be an integer >= 1, got 0"),
        (["cpcc.val_classes=2"], "cpcc.val_classes must be an integer >= 3"),
        (["backbone.name=resnet19"], "backbone.name: 'resnet19' is not a timm model"),
        (["backbone.stem=tiny"], "backbone.stem: unknown stem 'tiny'"),
        (["backbone.weights=/no/file.pth"], "backbone.weights: no such file"),
        (["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
        (["+trainer.max_epoch=3"], "lightning.Trainer takes no argument max_epoch"),
        (["ckpt_path=/no/last.ckpt"], "ckpt_path: no such checkpoint"),
        (["max_epochs=3"], "Could not override 'max_epochs'"),
        (["~model"], "model: missing config group (choose one with model=<option>)"),
        (["dist.options=foo"], "dist.options must be a mapping, got 'foo'"),
        (["data.image_size=abc"], "data.image_size must be an integer, got 'abc'"),
        (["+data.augment=foo"], "data: hierot.data.SyntheticDataModule takes no argument augm"),
        (["backbone.pretrained=yes"], "backbone.pretrained must be true/false, got 'yes'"),
        (["backbone.drop_rate=abc"], "backbone.drop_rate must be a number, got 'abc'"),
        (["top_k=abc"], "top_k must be an integer >= 1, got 'abc'"),
        (["+model.foo=1"], "model: hierot.models.HierarchyModule takes no argument foo"),
        (["callbacks.model_checkpoint.save_top_k=x"], "model_checkpoint.save_top_k must be an"),
        (["trainer.max_epochs=abc"], "trainer.max_epochs must be an integer or null, got 'abc'"),
        (["trainer.precision=bf17"], "trainer.precision must be one of 64, 32, 16, 'transf"),
        (["optimizer.lr=-1"], "optimizer: Invalid learning rate: -1"),
        (["optimizer.momentum=abc"], "optimizer.momentum must be a number, got 'abc'"),
        (["optimizer.nesterov=1"], "optimizer.nesterov must be true/false, got 1"),
        (["+optimizer.foo=1"], "optimizer: torch.optim.SGD takes no argument foo"),
        (["scheduler.warmup=2"], "scheduler.warmup must be a fraction in [0, 1), got 2"),
        (["scheduler=step", "scheduler.milestones=[2]"], "milestones must be fractions in (0, 1)"),
        (
            ["objective=focal"],
            "unknown objective 'focal'; available: ce, curriculum, embedding",
        ),
        (["objective=hxe", "objective.options.alpha=-1"], "objective.options: hxe: alpha must"),
        (["objective=hxe", "+objective.options.beta=1"], "objective 'hxe' has no option 'beta'"),
        (["objective=quadruplet", "objective.options.m2=0.5"], "need m1 > m2 > 0"),
        (["objective=mtl", "objective.options.weights=3"], "mtl: weights must be a list"),
        (["objective.name=focal"], "objective.name: unknown objective 'focal'"),
        (["cpcc.nodes=inner"], "cpcc.nodes must be one of leaves, all, got 'inner'"),
        (["cpcc.center=-1"], "cpcc.center must be a number >= 0, got -1"),
        (["dist=hyperbolic", "dist.options.mean=frechet"], "hyperbolic: mean must be one of"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as info:
        check_config(compose_config(overrides))
    text = str(info.value)
    assert message in text and "\n" not in text


def test_objective_options_that_depend_on_the_tree_fail_before_the_run(tmp_path):
    # one weight per level: the synthetic tree has 3 levels, known once the data is built
    from hierot.train import precheck

    with pytest.raises(ConfigError) as info:
        precheck(["debug=tiny", "objective=mtl", "objective.options.weights=[1,1]"])
    assert str(info.value) == (
        "objective.options: mtl: weights has 2 values but the tree has 3 levels (one weight "
        "per level, the top level first and the classes last)"
    )
    precheck(["debug=tiny", "objective=mtl", "objective.options.weights=[0.5,1,2]"])


def test_arguments_are_checked_against_the_callee_type_hints():
    def callee(
        n: int,
        rate: float | None = None,
        mode: Literal["a", 2] = "a",
        sizes: list[int] | None = None,
        table: dict[str, int] | None = None,
        when: datetime.timedelta | str | None = None,
        flag: bool = False,
        other: Path = Path(),
    ) -> None: ...

    good = {"n": 3, "rate": 1, "mode": 2, "sizes": [1], "table": {}, "when": 3, "other": 5}
    # an int is a float; a class (Path, timedelta) is left to the callee
    check_arguments(callee, good, "x", "callee")
    for values, message in [
        ({"n": 3.0}, "x.n must be an integer, got 3.0"),
        ({"n": True}, "x.n must be an integer, got True"),
        ({"rate": "fast"}, "x.rate must be a number or null, got 'fast'"),
        ({"mode": "2"}, "x.mode must be 'a' or 2, got '2'"),
        ({"sizes": 4}, "x.sizes must be a list or null, got 4"),
        ({"table": [1]}, "x.table must be a mapping or null, got [1]"),
        ({"flag": 0}, "x.flag must be true/false, got 0"),
        ({"mood": 1, "moon": 2}, "x: callee takes no argument mood, moon (did you mean mode?)"),
    ]:
        with pytest.raises(ConfigError) as info:
            check_arguments(callee, values, "x", "callee")
        assert str(info.value) == message


def test_group_null_drops_the_group_as_tilde_does(monkeypatch):
    args = ["logger=null", "lam=null", "+callbacks.x=null", "experiment=paper_cifar10", "-m"]
    assert dropped_groups(args) == ["~logger", *args[1:]]
    seen = []
    monkeypatch.setattr(sys, "argv", ["hierot.train", "logger=null", "model=null"])
    run_checked(seen.append, lambda: seen.append(sys.argv[1:]))
    assert seen == [["~logger", "~model"]] * 2  # what the check and Hydra's run both read
    assert "logger" not in compose_config(["~logger"]) and "logger" in compose_config([])


def test_sweeps_are_checked_on_every_value_without_the_whole_grid():
    assert sweep_variants(["lam=0.1,1", "dist=l2,emd,fastft", "hydra.run.dir=x", "seed=3"]) == [
        ["lam=0.1", "dist=l2", "seed=3"],
        ["lam=1", "dist=l2", "seed=3"],
        ["lam=0.1", "dist=emd", "seed=3"],
        ["lam=0.1", "dist=fastft", "seed=3"],
    ]
    assert sweep_variants(["+lam=range(0,3)"])[-1] == ["+lam=2"]
    with pytest.raises(ConfigError, match="no viable alternative"):
        sweep_variants(["lam=["])


def test_added_top_level_keys_are_refused_with_a_hint():
    overrides = ["+lamda=2", "+trainer.max_time=null"]
    with pytest.raises(ConfigError) as info:
        check_added_keys(overrides, compose_config(overrides))
    assert str(info.value).startswith("unknown key 'lamda' (did you mean 'lam'?): ")
    check_added_keys(["+trainer.max_time=null"], compose_config(["+trainer.max_time=null"]))


def test_a_checkpoint_that_is_not_one_is_refused_before_training(tmp_path):
    text = tmp_path / "last.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"ckpt_path: .* is not a readable PyTorch checkpoint"):
        check_config(compose_config([f"ckpt_path={text}"]))
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {}}, whole)
    check_config(compose_config([f"ckpt_path={whole}"]))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:-30])
    with pytest.raises(ConfigError, match="truncated"):
        check_config(compose_config([f"ckpt_path={cut}"]))


def test_one_line_flattens_multi_line_messages():
    assert one_line(ValueError("a\n\n  b\n")) == "a b"


@pytest.mark.slow
def test_command_line_error_is_one_line_and_leaves_no_run_dir(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "hierot.train", "backbone=resnet1", "lam=2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "hierot: error: unknown backbone 'resnet1'; available: resnet18, resnet34, resnet50, "
        "vit_b16, vit_l16, vit_s16"
    ]
    assert list(tmp_path.iterdir()) == []
    sweep = subprocess.run(
        [sys.executable, "-m", "hierot.train", "-m", "lam=-1,1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert sweep.returncode == 2
    assert sweep.stderr.strip() == "hierot: error: lam must be a number >= 0, got -1"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_epoch=1", "trainer.max_epoch: unknown key (did you mean "
                                "trainer.max_epochs?)"),
        ("data.batchsize=8", "data.batchsize: unknown key (did you mean data.batch_size?)"),
        ("lamda=1", "lamda: unknown key (did you mean lam?)"),
        ("trainer.zzz=1", "Could not override 'trainer.zzz'. To append to your config use "
                          "+trainer.zzz=1"),
        # following Hydra's advice reaches the component, which names its nearest argument
        ("+trainer.max_epoch=1", "trainer: lightning.Trainer takes no argument max_epoch (did "
                                 "you mean max_epochs?)"),
    ],
)  # fmt: skip
def test_a_misspelt_key_gets_the_nearest_one_on_the_first_error(override, message):
    with pytest.raises(ConfigError) as error:
        check_config(compose_config([override]))
    assert str(error.value) == message
