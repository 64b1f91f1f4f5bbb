"""The torch-only core: ``from hierot import CPCCLoss, Hierarchy, class_distances`` loads
torch, numpy and hierot's core modules, nothing else third-party (no Lightning, Hydra,
omegaconf, timm, torchvision, torchmetrics, matplotlib, POT, scipy, YAML), and POT only when
``emd`` first solves a plan. Its time is measured by ``scripts/bench_import.py``."""

import json
import subprocess
import sys
from unittest import mock

import pytest
import torch

import hierot
from hierot import correlation

# The modules of the core, by prefix: a new module under these is part of it, anything
# else of hierot's that the core imports fails here.
CORE = (
    "hierot",
    "hierot.checks",
    "hierot.correlation",
    "hierot.distances",
    "hierot.errors",
    "hierot.hierarchy",
    "hierot.objectives",
    "hierot.shared",
)
# What the core must never load (the application's libraries).
APPLICATION = {
    "hydra",
    "lightning",
    "lightning_fabric",
    "matplotlib",
    "omegaconf",
    "ot",
    "pytorch_lightning",
    "scipy",
    "timm",
    "torchmetrics",
    "torchvision",
    "yaml",
}

PROBE = """
import json, sys
before = set(sys.modules)
exec(sys.argv[1])
new = set(sys.modules) - before
print(json.dumps(sorted(new)))
"""


def new_modules(statement: str, setup: str = "") -> set[str]:
    """The modules a fresh interpreter loads for ``statement`` after ``setup``."""
    code = setup + "\n" + PROBE
    run = subprocess.run([sys.executable, "-c", code, statement],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return set(json.loads(run.stdout.strip().splitlines()[-1]))


def third_party(modules: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    return tops - set(sys.stdlib_module_names) - {"hierot"}


@pytest.fixture(scope="module")
def core_modules() -> set[str]:
    return new_modules(
        "from hierot import CPCCLoss, Hierarchy, class_distances", setup="import torch"
    )


@pytest.mark.slow
def test_the_core_imports_nothing_third_party_beyond_torch(core_modules):
    assert third_party(core_modules) == set()  # numpy comes with torch
    assert not {m.split(".")[0] for m in core_modules} & APPLICATION


@pytest.mark.slow
def test_the_core_is_hierots_core_modules_only(core_modules):
    ours = {m for m in core_modules if m.split(".")[0] == "hierot"}
    outside = {m for m in ours if not any(m == p or m.startswith(p + ".") for p in CORE)}
    assert outside == set()
    # every distance and objective is registered by the core import alone
    assert {"hierot.distances.emd", "hierot.objectives.supcon"} <= ours


@pytest.mark.slow
def test_the_metrics_of_plain_tensor_code_load_no_torchmetrics():
    modules = new_modules("import hierot.metrics.mistakes, hierot.metrics.decoding", "import torch")
    assert third_party(modules) == set()


@pytest.mark.slow
def test_pot_is_imported_when_emd_first_solves_a_plan():
    statement = (
        "import torch, hierot\n"
        "z, y = torch.randn(12, 3), torch.arange(12) % 3\n"
        "assert 'ot' not in __import__('sys').modules\n"
        "hierot.class_distances(z, y, 'emd')"
    )
    assert "ot" in {m.split(".")[0] for m in new_modules(statement)}


@pytest.mark.slow
def test_the_core_computes_cpcc_without_the_application():
    code = (
        "import sys, torch\n"
        "from hierot import CPCCLoss, Hierarchy\n"
        "tree = Hierarchy.from_nested({'a': ['x', 'y'], 'b': ['u', 'v']})\n"
        "z = torch.tensor([[0.], [0.1], [5.], [5.1]]).repeat_interleave(2, 0)\n"
        "loss = CPCCLoss(tree, 'l2')(z, torch.arange(4).repeat_interleave(2))\n"
        "print(round(float(loss), 6), 'lightning' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    loss, lightning = run.stdout.split()
    # two tight pairs far apart: class distances follow the tree closely, CPCC near 1
    assert 0 < float(loss) < 0.01 and lightning == "False"


@pytest.mark.slow
def test_the_application_names_load_on_first_use():
    statement = "import hierot; hierot.load_trained"
    assert "lightning" in {m.split(".")[0] for m in new_modules(statement, "import torch")}
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = hierot.nothing


@pytest.mark.slow
def test_peak_memory_of_the_core_is_that_of_torch():
    """Memory, unlike time, does not depend on the machine's load: the core's peak resident
    set stays within 60 MB of ``import torch``'s (the application adds ~330 MB)."""

    def peak_mb(statement: str) -> float:
        usage = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        code = f"{statement}\n{usage}"
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)  # fmt: skip
        return int(run.stdout.split()[-1]) / 1024

    torch_mb = peak_mb("import torch")
    core_mb = peak_mb("from hierot import CPCCLoss, Hierarchy, class_distances")
    assert core_mb - torch_mb < 60, (core_mb, torch_mb)


def test_no_public_name_shadows_its_module():
    """``hierot.cpcc`` is the documented function; its module is ``hierot.correlation``, so
    both are reachable and a patch of the module's names reaches the loss."""
    assert hierot.cpcc is correlation.cpcc and callable(hierot.cpcc)
    assert correlation.CPCCLoss is hierot.CPCCLoss
    tree = hierot.Hierarchy.from_nested({"a": ["x", "y"], "b": ["u", "v"]})
    z, y = torch.randn(8, 2, requires_grad=True), torch.arange(4).repeat(2)
    r = torch.tensor(0.25)
    with mock.patch("hierot.correlation.pearson", return_value=(r, torch.tensor(True))) as p:
        assert float(hierot.CPCCLoss(tree)(z, y)) == pytest.approx(0.75)
    assert p.call_count == 1
    names = {n for n in dir(hierot) if not n.startswith("_")}
    modules = {m.name for m in __import__("pkgutil").iter_modules(hierot.__path__)}
    assert not {n for n in hierot.__all__ if n in modules}
    assert "correlation" in modules and "cpcc" not in modules and "cpcc" in names
