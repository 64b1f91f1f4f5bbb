import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_installed_wheel_ships_the_configs_and_runs_from_anywhere(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "hierot", src / "hierot", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src]
    subprocess.run(build, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("hierot-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("hierot/conf/")}
    conf = ROOT / "hierot" / "conf"
    expected = {
        f"hierot/conf/{p.relative_to(conf)}"
        for p in conf.rglob("*.*")
        if p.suffix in {".yaml", ".py"}
    }
    assert len(expected) > 20 and shipped == expected

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import hierot; print(hierot.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(site))
    for command in ([sys.executable, "-m", "hierot.train"], [site / "bin" / "hierot-train"]):
        run = subprocess.run([*command, "backbone=vit_s16", "--cfg", "job"],
                             cwd=elsewhere, env=env, capture_output=True, text=True)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "name: vit_small_patch16_224" in run.stdout
        assert "_target_: torch.optim.AdamW" in run.stdout


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
