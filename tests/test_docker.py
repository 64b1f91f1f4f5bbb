"""The Dockerfile, checked without a Docker engine: hadolint (from the dev extra) and the
files it copies."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint is missing: install the dev extra (pip install -e '.[dev]')"
    return found


@pytest.mark.slow
def test_dockerfile_passes_hadolint():
    run = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.slow
def test_hadolint_does_catch_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nCMD python -m hierot.train\n")
    run = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True)
    assert run.returncode != 0
    assert "DL3007" in run.stdout  # latest tag
    assert "DL3013" in run.stdout or "DL3042" in run.stdout  # unpinned / cached pip


@pytest.mark.slow
def test_dockerfile_installs_the_pinned_package_and_runs_training():
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG BASE=(\S+)", text, re.M).group(1)
    torch_pin = re.search(r"^torch==(\S+)", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    assert base.startswith(f"pytorch/pytorch:{torch_pin}-cuda")  # the torch CI tests
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), path
    assert 'pip install --no-cache-dir -c constraints.txt "' in text
    assert 'ENTRYPOINT ["python", "-m", "hierot.train"]' in text
    assert "HIEROT_OUTPUTS=/outputs" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "outputs", "multirun", "tests"):
        assert path in ignored, path
