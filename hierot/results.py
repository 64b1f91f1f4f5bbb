"""Measured results as files: a CSV whose first lines name the environment it was measured
in, and the Markdown tables rendered from it between markers in ``docs/results/``.

A results CSV starts with ``# key: value`` lines (``machine``, ``torch``, ``commit``,
``date``, ``command``, and any ``note``), then a header row and the rows::

    # machine: AMD EPYC (2 cores)
    # torch: 2.14.1
    # commit: 46d8830
    # date: 2026-11-25 22:50 UTC
    # command: python scripts/bench_evaluate.py
    family,seconds
    knn,0.73

A page holds ``<!-- table: <file>.csv -->`` and ``<!-- end table -->``; ``render_page``
fills what lies between with the environment (once, above the table) and the table, so the
numbers on the page are always those of the committed CSV (``scripts/render_results.py``).
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from hierot.writes import write_atomic

ENVIRONMENT = ("machine", "torch", "commit", "date", "command")
_BLOCK = re.compile(r"(<!-- table: (\S+) -->\n)(.*?)(<!-- end table -->)", re.S)


def _cpu() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def _commit(repo: Path) -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}{'+dirty' if dirty else ''}"


def environment(repo: Path | None = None) -> dict[str, str]:
    """Where and when a measurement is made: the CPU (and GPU, if any) with its core count,
    torch's version, the git commit of ``repo`` (``+dirty`` with uncommitted changes) and
    the UTC date."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return {
        "machine": f"{_cpu()} ({os.cpu_count()} cores{gpu})",
        "torch": torch.__version__,
        "commit": _commit(repo or Path(__file__).resolve().parents[1]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def command_line() -> str:
    """This process's command line, as a reader would type it again."""
    return " ".join(["python", *(shlex.quote(a) for a in sys.argv)])


def write_results(
    path: Path,
    rows: Sequence[Mapping[str, object]],
    command: str,
    notes: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> None:
    """``rows`` (columns in the order of the first row's keys, then any new ones) as a
    results CSV headed by ``env`` (default: this machine's ``environment()``), ``command``
    and ``notes``."""
    meta = {**(env or environment()), "command": command}
    text = io.StringIO(newline="")
    for key in ENVIRONMENT:
        text.write(f"# {key}: {meta[key]}\n")
    for note in notes:
        text.write(f"# note: {note}\n")
    columns = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in rows])
    write_atomic(Path(path), text.getvalue().encode())


def read_results(path: Path) -> tuple[dict[str, str], list[str], list[dict[str, str]]]:
    """(environment and notes, columns, rows) of a results CSV; notes are joined in order
    under ``note``."""
    meta: dict[str, str] = {}
    lines = Path(path).read_text().splitlines()
    body = 0
    for body, line in enumerate(lines):  # noqa: B007 -- the first line of the table
        if not line.startswith("# "):
            break
        key, _, value = line[2:].partition(": ")
        meta[key] = f"{meta[key]} {value}" if key in meta else value
    else:
        body = len(lines)
    missing = [k for k in ENVIRONMENT if k not in meta]
    if missing:
        raise ValueError(f"{path}: not a results CSV (no '# {missing[0]}: ...' line)")
    reader = csv.DictReader(lines[body:])
    return meta, list(reader.fieldnames or []), list(reader)


def rows_from_markdown(table: str) -> list[dict[str, str]]:
    """The rows of a Markdown table (its first line the header, its second the rule)."""
    lines = [line.strip() for line in table.strip().splitlines()]

    def cells(line: str) -> list[str]:
        return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line[1:-1])]

    header = cells(lines[0])
    return [dict(zip(header, cells(line), strict=True)) for line in lines[2:]]


class PrintedTable:
    """A Markdown table printed line by line as it is measured (so a long benchmark shows
    its rows as they come), kept to be written as a results CSV at the end."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def print(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)

    def write(self, path: Path | None, notes: Sequence[str] = ()) -> None:
        """The table as a results CSV at ``path`` (nothing without one)."""
        if path is not None:
            write_results(path, rows_from_markdown("\n".join(self.lines)), command_line(), notes)


def _cell(text: str) -> str:
    """A table cell's text as Markdown shows it literally (``|`` and ``<`` escaped)."""
    return text.replace("|", "\\|").replace("<", "&lt;")


def render_table(path: Path) -> str:
    """The environment line, the notes and the Markdown table of a results CSV."""
    meta, columns, rows = read_results(path)
    lines = [
        f"Measured on {meta['machine']}, torch {meta['torch']}, commit {meta['commit']}, "
        f"{meta['date']}: `{meta['command']}`.",
        "",
    ]
    if "note" in meta:
        lines += [meta["note"], ""]
    lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c) or "") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def render_page(text: str, folder: Path) -> str:
    """``text`` with every marked table rendered from its CSV (a path relative to
    ``folder``)."""
    return _BLOCK.sub(
        lambda m: f"{m.group(1)}\n{render_table(folder / m.group(2))}\n{m.group(4)}", text
    )
