"""The config checks live with their components (``hierot.checks``); ``hierot.config``
composes and dispatches them."""

import pytest
from omegaconf import DictConfig

from hierot import checks
from hierot.config import check_config, compose_config
from hierot.errors import ConfigError


def test_each_component_registers_its_own_check():
    owners = {name.rsplit(".", 1)[0] for name in checks.registered_checks()}
    assert owners == {
        "hierot.correlation",
        "hierot.data.module",
        "hierot.metrics.epoch",
        "hierot.models.backbones",
        "hierot.objectives.registry",
        "hierot.resume",
        "hierot.speed",
        "hierot.stopping",
    }


def test_a_new_components_check_runs_with_the_others(monkeypatch):
    monkeypatch.setitem(checks._CHECKS, "train", dict(checks._CHECKS["train"]))

    @checks.config_check
    def check_rate(cfg: DictConfig) -> None:
        if cfg.get("rate", 0) < 0:
            raise ConfigError(f"rate must be >= 0, got {cfg.rate}")

    check_config(compose_config(["+rate=1"]))
    with pytest.raises(ConfigError, match=r"^rate must be >= 0, got -1$"):
        check_config(compose_config(["+rate=-1"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [  # one per registered check: the one-line errors stay as they were
        ("data.batch_size=0", r"^data\.batch_size must be an integer >= 1, got 0$"),
        ("lam=-1", r"^lam must be a number >= 0, got -1$"),
        ("cpcc.val_every=0", r"^cpcc\.val_every must be an integer >= 1, got 0$"),
        ("backbone.stem=tall", r"^backbone\.stem: unknown stem 'tall'"),
        ("objective.name=nope", r"^objective\.name: unknown objective 'nope'"),
        ("checkpoint.save_last=yes", r"^checkpoint\.save_last must be true or false"),
        ("checkpoint.requeue=1", r"^checkpoint\.requeue must be true or false, got 1$"),
        ("speed.compile=maybe", r"^speed\.compile must be true, false or auto, got 'maybe'$"),
        ("speed.matmul_precision=low", r"^speed\.matmul_precision must be one of auto, highest"),
        ("speed.check_every_n_steps=0", r"^speed\.check_every_n_steps must be an integer >= 1"),
    ],
)
def test_each_registered_check_is_run(override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([override]))
