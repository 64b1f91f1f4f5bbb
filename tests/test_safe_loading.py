"""Loading runs no code: checkpoints are read with ``torch.load(weights_only=True)`` and a
run's saved ``config.yaml`` instantiates only hierot's components and a short allow-list.
What hierot writes (every objective, every distance, the periodic and the graceful-stop
checkpoint) loads that way; a file or config that would need more is refused in one line
naming it, and nothing in it runs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from hierot import load_trained, run_datamodule
from hierot.config import CONFIG_DIR, compose_config
from hierot.errors import ConfigError, Interrupted
from hierot.stopping import GracefulStop
from hierot.targets import check_saved_targets
from hierot.train import build_run, train

TINY = ["debug=tiny", "data.split=source", "trainer.limit_train_batches=2"]


class Evil:
    """Pickles as a call of ``os.system``: unpickling it runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained run on the source split (transfer takes it too)."""
    out = tmp_path_factory.mktemp("run")
    train(compose_config([*TINY, f"output_dir={out}"]))
    return out


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run directory as training leaves it, without training: the config it would save
    and a checkpoint holding no weights (what the refusals below look at)."""
    out = tmp_path / "fake"
    (out / "checkpoints").mkdir(parents=True)
    OmegaConf.save(compose_config([*TINY, f"output_dir={out}"]), out / "config.yaml", resolve=True)
    torch.save({"state_dict": {}}, out / "checkpoints" / "last.ckpt")
    return out


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.ckpt", "logs"))
    return to


def evil_checkpoint(run: Path, to: Path, marker: Path) -> Path:
    """``to``: a copy of ``run`` whose checkpoint would ``touch marker`` when unpickled."""
    ckpt = copy_run(run, to) / "checkpoints" / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Evil(f"touch {marker}")}, ckpt)
    return ckpt


def evil_config(run: Path, to: Path, marker: Path, **data: object) -> Path:
    """``to``: a copy of ``run`` whose ``config.yaml`` has data ``_target_: os.system``."""
    copy = copy_run(run, to)
    shutil.copy(run / "checkpoints" / "last.ckpt", copy / "checkpoints" / "last.ckpt")
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["data"] = data or {"_target_": "os.system", "command": f"touch {marker}"}
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    return copy / "checkpoints" / "last.ckpt"


def names_global(message: str, ckpt: Path) -> None:
    assert str(ckpt) in message and "os.system" in message, message
    assert "\n" not in message


# -- what hierot writes loads weights-only ----------------------------------------------

OBJECTIVES = sorted(p.stem for p in (CONFIG_DIR / "objective").glob("*.yaml"))
DISTANCES = sorted(p.stem for p in (CONFIG_DIR / "dist").glob("*.yaml"))
# Every objective with every distance would be 88 runs; each objective once, beside each
# distance in turn (every distance at least once), is eleven: the checkpoint holds the
# objective's and the distance's settings and state.
PAIRS = [(o, DISTANCES[i % len(DISTANCES)]) for i, o in enumerate(OBJECTIVES)]
STAGED = {  # two epochs, one per stage
    "curriculum": ["trainer.max_epochs=2", "objective.options.coarse_fraction=0.5"],
    "supcon": ["trainer.max_epochs=2", "objective.options.probe_fraction=0.5"],
}


def test_every_objective_and_distance_is_listed():
    assert len(OBJECTIVES) == len(PAIRS) >= len(DISTANCES)
    assert {o for o, _ in PAIRS} == set(OBJECTIVES) and {d for _, d in PAIRS} == set(DISTANCES)


@pytest.mark.slow
@pytest.mark.parametrize(("objective", "dist"), PAIRS)
def test_what_a_run_writes_loads_weights_only(tmp_path, objective, dist):
    out = tmp_path / "run"
    cfg = compose_config(
        [*TINY, f"objective={objective}", f"dist={dist}", "checkpoint.every_n_steps=1",
         "data.test_per_class=1", "trainer.limit_val_batches=1", f"output_dir={out}",
         *STAGED.get(objective, [])]
    )  # fmt: skip
    train(cfg)
    written = sorted((out / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in written} >= {"last.ckpt", "resume.ckpt"}
    for ckpt in written:
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert saved["hyper_parameters"]["objective"] == objective
        load_trained(ckpt)


@pytest.mark.slow
def test_a_graceful_stop_checkpoint_loads_weights_only_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = compose_config([*TINY, f"output_dir={out}"])
    datamodule, model, trainer = build_run(cfg)
    (stop,) = [c for c in trainer.callbacks if isinstance(c, GracefulStop)]
    stop.received = signal.SIGTERM  # as if signalled: stops after the first step
    with pytest.raises(Interrupted):
        trainer.fit(model, datamodule=datamodule)
    resume = out / "checkpoints" / "resume.ckpt"
    assert torch.load(resume, map_location="cpu", weights_only=True)["global_step"] == 1

    # resuming reads it weights-only, and so does every load of the run's end
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # an explicit True holds
    train(compose_config([*TINY, f"output_dir={out}", "ckpt_path=auto"]))
    load_trained(out / "checkpoints" / "last.ckpt")
    assert calls and all(c is True for c in calls), calls


# -- a checkpoint that would run code -----------------------------------------------------


def test_a_checkpoint_that_would_run_code_is_refused_before_it_runs(fake_run, tmp_path):
    from hierot.evaluate import precheck as evaluate_precheck
    from hierot.transfer import precheck as transfer_precheck

    marker = tmp_path / "pwned"
    ckpt = evil_checkpoint(fake_run, tmp_path / "evil", marker)
    with pytest.raises(ConfigError) as info:
        load_trained(ckpt)
    names_global(str(info.value), ckpt)
    for precheck in (evaluate_precheck, transfer_precheck):
        with pytest.raises(ConfigError) as info:
            precheck([f"ckpt={ckpt}"])
        names_global(str(info.value), ckpt)
    # resuming from it: ckpt_path=FILE, and ckpt_path=auto finding it in the run directory
    with pytest.raises(ConfigError) as info:
        compose_and_check([*TINY, f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'other'}"])
    names_global(str(info.value), ckpt)
    resume = ckpt.with_name("resume.ckpt")
    ckpt.rename(resume)
    with pytest.raises(ConfigError) as info:
        train(compose_config([*TINY, f"output_dir={resume.parent.parent}", "ckpt_path=auto"]))
    names_global(str(info.value), resume)
    assert not marker.exists()


def compose_and_check(overrides: list[str]) -> None:
    from hierot.config import check_config

    check_config(compose_config(overrides))


def command(tmp_path: Path, entry: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"hierot.{entry}", *args, f"hydra.run.dir={tmp_path / entry}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hierot: error: "), lines
    return lines[0][len("hierot: error: ") :]


@pytest.mark.slow
def test_evaluate_and_transfer_refuse_a_checkpoint_that_would_run_code(run, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = evil_checkpoint(run, tmp_path / "evil", marker)
    for entry in ("evaluate", "transfer"):
        names_global(one_line_error(command(tmp_path, entry, f"ckpt={ckpt}")), ckpt)
        assert not (tmp_path / entry).exists()
    assert not marker.exists()


# -- a saved config that would run code ---------------------------------------------------


def test_a_saved_config_instantiates_only_hierots_components(fake_run, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = evil_config(fake_run, tmp_path / "evil", marker)
    config = ckpt.parent.parent / "config.yaml"
    for load in (load_trained, run_datamodule):
        with pytest.raises(ConfigError) as info:
            load(ckpt)
        message = str(info.value)
        assert str(config) in message and "data._target_" in message, message
        assert "os.system" in message, message
    assert not marker.exists()


# (a config, the key and the target its refusal names)
REFUSED = [
    ({"data": {"_target_": "os.system"}}, "data._target_", "os.system"),
    # a partial is called later by whoever receives it
    ({"data": {"_target_": "os.system", "_partial_": True}}, "data._target_", "os.system"),
    # positional arguments, nested anywhere
    (
        {
            "model": {
                "_target_": "hierot.models.HierarchyModule",
                "_args_": [{"_target_": "subprocess.run", "_args_": ["id"]}],
            }
        },
        "model._args_[0]._target_",
        "subprocess.run",
    ),
    (
        {"callbacks": {"x": {"y": [{"_target_": "builtins.eval"}]}}},
        "callbacks.x.y[0]._target_",
        "builtins.eval",
    ),
    # an allowed prefix does not reach what a module under it imported
    ({"data": {"_target_": "hierot.cli.shutil.rmtree"}}, "data._target_", "hierot.cli.shutil"),
    (
        {"optimizer": {"_target_": "torch.optim.optimizer.torch.hub.load"}},
        "optimizer._target_",
        "torch.optim.optimizer.torch.hub.load",
    ),
    # timm's checkpoint loaders take weights_only=False: only create_model is allowed
    ({"backbone": {"_target_": "timm.models.load_checkpoint"}}, "backbone._target_", "timm."),
    # an interpolation could build a node when resolved; a saved config is resolved
    ({"data": {"_target_": "${oc.decode:'os.system'}"}}, "data._target_", "${oc.decode"),
    ({"data": "${oc.create:{_target_: os.system}}"}, "data", "${oc.create"),
    ({"data": {"_target_": 3}}, "data._target_", "3"),
]


@pytest.mark.parametrize(("node", "key", "target"), REFUSED)
def test_a_saved_config_target_outside_the_allow_list_is_refused(node, key, target, tmp_path):
    with pytest.raises(ConfigError) as info:
        check_saved_targets(node, tmp_path / "config.yaml")
    message = str(info.value)
    assert f"{key}" in message and target in message and "\n" not in message, message


def test_the_targets_hierot_ships_are_allowed(fake_run):
    config = fake_run / "config.yaml"
    check_saved_targets(yaml.safe_load(config.read_text()), config)
    for target in (
        "hierot.data.SyntheticDataModule", "hierot.models.create_backbone",
        "torch.optim.AdamW", "torch.optim.lr_scheduler.CosineAnnealingLR", "timm.create_model",
        "lightning.pytorch.loggers.TensorBoardLogger", "lightning.pytorch.loggers.WandbLogger",
        "lightning.pytorch.callbacks.ModelCheckpoint", "hierot.logs.MLFlowLogger",
    ):  # fmt: skip
        check_saved_targets({"x": {"_target_": target, "_partial_": True}}, config)


def test_a_run_choice_cannot_name_a_config_outside_the_shipped_groups(fake_run, tmp_path):
    """``.hydra/hydra.yaml``'s choices become ``data=<option>`` overrides: an option with a
    path in it would compose a file from anywhere."""
    from hierot.checkpoints import run_choices, run_group_overrides

    copy = copy_run(fake_run, tmp_path / "run")
    (copy / ".hydra").mkdir()
    choices = {"data": "../../../../../../../tmp/evil", "backbone": "resnet18"}
    (copy / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    ckpt = copy / "checkpoints" / "last.ckpt"
    assert run_choices(ckpt) == {"backbone": "resnet18"}
    assert run_group_overrides([f"ckpt={ckpt}"]) == ["backbone=resnet18"]


@pytest.mark.slow
def test_evaluate_refuses_a_saved_config_that_would_run_code(run, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = evil_config(run, tmp_path / "evil", marker)
    message = one_line_error(command(tmp_path, "evaluate", f"ckpt={ckpt}"))
    assert "data._target_" in message and "os.system" in message, message
    ckpt = evil_config(
        run, tmp_path / "evil_args", marker, _target_="os.system", _args_=[f"touch {marker}"]
    )
    message = one_line_error(command(tmp_path, "transfer", f"ckpt={ckpt}"))
    assert "data._target_" in message and "os.system" in message, message
    assert not (tmp_path / "evaluate").exists() and not (tmp_path / "transfer").exists()
    assert not marker.exists()
