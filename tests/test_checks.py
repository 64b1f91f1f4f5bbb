"""The config checks live with their components (``hierot.checks``); ``hierot.config``
composes and dispatches, importing no component, and no hierot module imports itself back."""

import ast
from pathlib import Path

import pytest
from omegaconf import DictConfig

import hierot
from hierot import checks
from hierot.config import check_config, compose_config
from hierot.errors import ConfigError

PACKAGE = Path(hierot.__file__).parent
# what the config layer may import: helpers that know no component
CONFIG_LAYER = {"hierot.arguments", "hierot.checks", "hierot.errors", "hierot.overrides"}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """hierot module -> the hierot modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        edges[name] = {m for m in found if m in modules and m != name and m != "hierot"}
    return edges


def test_the_config_layer_imports_no_component():
    assert imports()["hierot.config"] <= CONFIG_LAYER


def test_no_module_is_reached_again_from_itself():
    edges = imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(edges[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges[m]
        return seen

    assert [m for m in edges if m in reaches(m)] == []


def test_each_component_registers_its_own_check():
    owners = {name.rsplit(".", 1)[0] for name in checks.registered_checks()}
    assert owners == {
        "hierot.cpcc",
        "hierot.data.module",
        "hierot.metrics.epoch",
        "hierot.models.backbones",
        "hierot.objectives.registry",
        "hierot.resume",
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
    ],
)
def test_each_registered_check_is_run(override, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config([override]))
