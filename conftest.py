"""Runs the fenced ``python`` blocks of the README and of ``docs/`` as tests (sybil): each
page's blocks in order in one namespace, in a temporary working directory, so that an
example may write files. A block that cannot run here (it needs a GPU, a dataset, the
network) is preceded by ``<!-- skip: next -->``; ``<!-- invisible-code-block: python -->``
comments hold set-up a reader does not need to see. They run in the slow lane."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import pytest
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser


def _enter_tmp_dir(namespace: dict[str, Any]) -> None:
    namespace["__cwd__"] = os.getcwd()
    namespace["__tmp__"] = tempfile.mkdtemp(prefix="hierot-docs-")
    os.chdir(namespace["__tmp__"])


def _leave_tmp_dir(namespace: dict[str, Any]) -> None:
    os.chdir(namespace["__cwd__"])
    shutil.rmtree(namespace["__tmp__"], ignore_errors=True)


pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "CONTRIBUTING.md", "docs/*.md", "docs/results/*.md"],
    setup=_enter_tmp_dir,
    teardown=_leave_tmp_dir,
).pytest()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if str(item.fspath).endswith(".md"):
            item.add_marker(pytest.mark.slow)
