import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


SCRIPTS = {
    "hierot-train", "hierot-evaluate", "hierot-transfer", "hierot-predict", "hierot-sweep-summary"
}  # fmt: skip


def readme_table() -> dict[str, float]:
    """The default run's test metrics as the README prints them."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```text\n", 1)[1].split("```", 1)[0]
    rows = (line.split() for line in block.splitlines())
    return {r[0]: float(r[1]) for r in rows if len(r) == 2 and r[0].startswith("test/")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """``python -m build`` of a copy of the checkout: (its dist folder) a wheel and an sdist."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    shutil.copytree(ROOT / "hierot", src / "hierot", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", src]
    run = subprocess.run(build, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return tmp / "dist"


@pytest.mark.slow
def test_the_build_gives_a_wheel_and_an_sdist_that_twine_accepts(dist):
    version = tomllib_load()["project"]["version"]
    wheel, sdist = dist / f"hierot-{version}-py3-none-any.whl", dist / f"hierot-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file()
    check = [sys.executable, "-m", "twine", "check", "--strict", wheel, sdist]
    run = subprocess.run(check, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.count("PASSED") == 2, run.stdout + run.stderr

    names = zipfile.ZipFile(wheel).namelist()
    conf = ROOT / "hierot" / "conf"
    expected = {f"hierot/conf/{p.relative_to(conf)}" for p in conf.rglob("*.yaml")}
    assert len(expected) > 20 and {n for n in names if n.endswith(".yaml")} == expected
    assert "hierot/py.typed" in names and "hierot/conf/__init__.py" in names
    with tarfile.open(sdist) as tar:  # the sdist builds the same wheel: same configs
        in_sdist = {n.split("/", 1)[1] for n in tar.getnames() if n.endswith(".yaml")}
    assert in_sdist == expected
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert {line.split(" = ")[0] for line in scripts.splitlines() if " = " in line} == SCRIPTS


def tomllib_load() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def site_packages(python: Path) -> str:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_outside_the_checkout_runs_the_main_job(dist, tmp_path):
    """A user's install: the wheel alone in a new virtual environment, run from a folder
    that is not the checkout. Its dependencies come from this environment's site-packages
    (a ``.pth`` line, added after the install so that pip sees no hierot there): nothing is
    downloaded, and the checkout's own editable hook is not on the path."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    (wheel,) = dist.glob("hierot-*.whl")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", python]
    subprocess.run([*pip, "install", "--no-deps", "--no-index", wheel], check=True)
    Path(site_packages(python), "deps.pth").write_text(site_packages(Path(sys.executable)) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    code = ("import sys, hierot; from hierot import CPCCLoss; "
            "print(hierot.__file__, hierot.__version__, 'lightning' in sys.modules)")  # fmt: skip
    where = subprocess.run([python, "-c", code], cwd=elsewhere, env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert where.returncode == 0, where.stderr
    file, version, lightning = where.stdout.split()
    assert file.startswith(str(venv)) and lightning == "False"
    assert version == tomllib_load()["project"]["version"]

    # the installed package's configs, data and entry point, end to end on one batch of each
    # split (the default job's numbers are the README command's, which CI runs as written)
    run = subprocess.run([venv / "bin" / "hierot-train", "debug=fast", "hydra.run.dir=run"],
                         cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = json.loads((elsewhere / "run" / "metrics.json").read_text())
    readme = readme_table()
    assert len(readme) == 8 and set(readme) <= set(metrics)  # the table's every metric
    assert metrics["steps"] == 1 and 0 <= metrics["test/acc_fine"] <= 1
    for script in SCRIPTS:  # every console script starts from the installed package
        helped = subprocess.run([venv / "bin" / script, "--help"], cwd=elsewhere, env=env,
                                capture_output=True, text=True)  # fmt: skip
        # Hydra's help for the Hydra commands ("train is powered by Hydra."), a usage
        # line for the summary; evaluate and transfer gave a traceback before
        assert helped.returncode == 0 and "Traceback" not in helped.stderr, script
        assert script.split("-")[1] in helped.stdout.split("\n", 1)[0], helped.stdout[:200]


def test_pyproject_holds_ranges_that_the_pinned_versions_satisfy():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    declared += [Requirement(r) for extra in project["optional-dependencies"].values()
                 for r in extra]  # fmt: skip
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    for req in declared:
        # a user's own CUDA build of torch (2.x.y+cu12z) must satisfy the declared range, so
        # no exact pins in pyproject: those belong in constraints.txt
        assert not any(spec.operator == "==" for spec in req.specifier), req
        if req.name.lower() in pins:
            assert req.specifier.contains(pins[req.name.lower()]), (req, pins[req.name.lower()])
    assert {"torch", "torchvision", "pot", "timm", "lightning"} <= set(pins)


def test_every_output_folder_of_the_entry_points_is_ignored_by_git():
    import re

    root = Path(__file__).parent.parent
    ignored = set((root / ".gitignore").read_text().split())
    folders = set()
    for config in (root / "hierot" / "conf").glob("*.yaml"):
        folders |= set(re.findall(r"HIEROT_OUTPUTS,\.\}/(\w+)/", config.read_text()))
    assert folders >= {"outputs", "multirun", "evaluations", "transfers"}
    assert {f"{f}/" for f in folders} <= ignored


def test_the_run_folders_the_docs_name_are_ignored_by_git():
    import re

    root = Path(__file__).parent.parent
    ignored = set((root / ".gitignore").read_text().split())
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    named = re.compile(r"hydra\.(?:run|sweep)\.dir=([A-Za-z_]\w*)/")
    folders = {f for page in pages for f in named.findall(page.read_text())}
    assert "runs" in folders  # docs/training.md: hydra.run.dir=runs/a
    assert {f"{f}/" for f in folders} <= ignored
