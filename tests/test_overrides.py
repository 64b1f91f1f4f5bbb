"""One override parser (Hydra's) for every entry point: ``~key``, ``+key``, ``++key``, quoted
values and sweeps read the same in evaluate, transfer, the sweep summary and the config."""

import pytest
import yaml
from omegaconf import OmegaConf

from hierot.checkpoints import run_group_overrides, use_run_groups
from hierot.errors import ConfigError
from hierot.evaluate import precheck
from hierot.overrides import keys, set_values
from hierot.sweep import OVERRIDE, job_row


def test_set_values_reads_adds_quotes_and_not_deletions_or_sweeps():
    assert set_values(["ckpt=a.ckpt"], "ckpt") == ["a.ckpt"]
    assert set_values(["+ckpt=a.ckpt"], "ckpt") == ["a.ckpt"]
    assert set_values(["++ckpt=a.ckpt"], "ckpt") == ["a.ckpt"]
    assert set_values(["ckpt=a.ckpt,b.ckpt"], "ckpt") == []  # a sweep
    assert set_values(["~ckpt"], "ckpt") == []
    # a quoted path holding '=' and ',' is one value, not a key and not a sweep
    assert set_values(["ckpt='/runs/lam=1,seed=0/last.ckpt'"], "ckpt") == [
        "/runs/lam=1,seed=0/last.ckpt"
    ]
    assert keys(["~data.split", "+a=1", "++b=2", "c=1,2"]) == {"data.split", "a", "b", "c"}


def test_a_malformed_override_is_one_line():
    with pytest.raises(ConfigError) as e:
        set_values(["lam=[1,"], "lam")
    assert "\n" not in str(e.value)


@pytest.fixture
def run_ckpt(tmp_path):
    """A checkpoint inside a training run directory that chose data=cifar100."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    saved = {
        "data": {
            "_target_": "hierot.data.Cifar100DataModule",
            "root": "/data",
            "split": "source",
            "height": 2,
        }
    }
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    choices = {"hydra": {"runtime": {"choices": {"data": "cifar100", "backbone": "resnet18"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    return ckpt


def test_run_groups_skip_groups_the_command_line_names_in_any_form(run_ckpt):
    assert run_group_overrides([f"ckpt={run_ckpt}"]) == ["data=cifar100", "backbone=resnet18"]
    assert run_group_overrides([f"ckpt={run_ckpt}", "+data=cifar10"]) == ["backbone=resnet18"]
    assert run_group_overrides([f"ckpt={run_ckpt}", "~backbone"]) == ["data=cifar100"]
    assert run_group_overrides([f"ckpt={run_ckpt},{run_ckpt}"]) == []  # a sweep over checkpoints


def test_resolve_groups_deletes_adds_and_reads_quoted_values(run_ckpt):
    cfg = OmegaConf.create({"data": {"_target_": "default", "root": None}})
    overrides = ["~data.split", "++data.root='/mnt/a=b,c'", "+data.extra=1"]
    use_run_groups(cfg, overrides, run_ckpt)
    # the run's data config, with the key removed (not set: the old reader took ~data.split
    # for a value), the quoted root whole, and the added key
    assert "split" not in cfg.data
    assert cfg.data.root == "/mnt/a=b,c" and cfg.data.extra == 1 and cfg.data.height == 2
    cfg = OmegaConf.create({"data": {"_target_": "default"}})
    use_run_groups(cfg, ["data=cifar10"], run_ckpt)  # another option: the run's is not used
    assert cfg.data._target_ == "default"


def test_evaluate_refuses_training_keys_in_any_form():
    for override in ("lam=2", "+lam=2", "~lam", "dist.method=l2"):
        with pytest.raises(ConfigError, match=r"evaluate takes no (lam|dist)="):
            precheck([override])


def test_sweep_rows_read_each_override_form(tmp_path):
    job = tmp_path / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["+a.b=1", "~c", "++d='x,y'", "lam=0.5"])
    )
    row = job_row(job)
    assert row[OVERRIDE + "a.b"] == "1" and row[OVERRIDE + "c"] == ""
    assert row[OVERRIDE + "d"] == "x,y" and row[OVERRIDE + "lam"] == "0.5"
