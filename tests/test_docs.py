"""The documentation is checked like code: the site builds with warnings as errors, and every
``python -m hierot.*`` command line in the README and ``docs/`` is composed and checked by the
project's own config check, so a renamed key fails here rather than for a reader. (The
Python blocks run through sybil: ``conftest.py`` at the repository root.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hierot.checks import run_checks
from hierot.config import check_added_keys, check_config, compose_config, sweep_variants
from hierot.errors import ConfigError
from hierot.predict import check_settings as check_predict_settings

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md")])
PAGES = [p for p in PAGES if "_build" not in p.parts and "generated" not in p.parts]
ENTRY = re.compile(r"python -m hierot\.(train|evaluate|transfer|predict)\b(.*)")


def fenced_commands(text: str, prefix: str) -> list[str]:
    """Command lines starting with ``prefix`` in the ``bash`` blocks (continuations joined,
    comments dropped)."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(prefix):
                commands.append(line)
    return commands


def documented_commands(prefix: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(page, command line) of every command starting with ``prefix``, in a ``bash`` block
    or inline, that ``pattern`` matches (not prose such as `python scripts/...`)."""
    found = []
    for page in PAGES:
        # a rendered results table records the command that measured it, not one to type
        text = re.sub(r"<!-- table: .*?<!-- end table -->", "", page.read_text(), flags=re.S)
        lines = fenced_commands(text, prefix) + re.findall(rf"`({re.escape(prefix)}[^`]+)`", text)
        for command in dict.fromkeys(" ".join(c.split()) for c in lines):
            if pattern.match(command):
                found.append((str(page.relative_to(ROOT)), command))
    return found


def commands() -> list[tuple[str, str]]:
    """Every train, evaluate, transfer and predict command in the docs."""
    return documented_commands("python -m hierot.", ENTRY)


def check_command(command: str) -> None:
    """The command's config composed and checked as its entry point would (each value of a
    sweep). What a reader fills in is left out: ``key=...`` and ``<...>`` placeholders, and
    for evaluate and transfer the ``data.*``/``backbone.*`` keys, which apply to the groups
    of the checkpoint's run (unknown here) unless the command names the group."""
    entry, rest = ENTRY.match(command).groups()  # type: ignore[union-attr]
    args = shlex.split(re.sub(r"<[^>]*>", "X", rest))
    if "--cfg" in args or "--help" in args:
        return
    overrides = [a for a in args if a not in ("-m", "--multirun") and not a.endswith("=...")]
    if entry != "train":
        named = {a.split("=", 1)[0] for a in overrides}
        overrides = [
            a for a in overrides
            if not (a.startswith(("data.", "backbone.")) and a.split(".", 1)[0] not in named)
        ]  # fmt: skip
    for job in sweep_variants(overrides):
        cfg = compose_config(job, config_name=entry)
        check_added_keys(job, cfg)
        if entry == "train":
            check_config(cfg)
        elif entry == "evaluate":
            run_checks(cfg, "evaluate")
        elif entry == "predict":
            check_predict_settings(cfg)


SCRIPT = re.compile(r"python (scripts/\w+\.py)\b(.*)")


def script_commands() -> list[tuple[str, str]]:
    """Every ``python scripts/...`` command in the docs."""
    return documented_commands("python scripts/", SCRIPT)


@pytest.mark.slow  # one process per command
@pytest.mark.parametrize(("page", "command"), script_commands())
def test_every_script_command_line_in_the_docs_parses(page, command):
    # --help after the options: argparse judges every option before it and exits 0, so a
    # renamed or removed option fails here; arguments after "--" are the jobs' own
    script, rest = SCRIPT.match(command).groups()  # type: ignore[union-attr]
    args = shlex.split(rest)
    cut = args.index("--") if "--" in args else len(args)
    run = subprocess.run(
        [sys.executable, script, *args[:cut], "--help", *args[cut:]],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.slow  # about 80 compositions: the docs lane, not the everyday one
@pytest.mark.parametrize(("page", "command"), commands())
def test_every_command_line_in_the_docs_passes_the_config_check(page, command):
    check_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "python -m hierot.train lamda=1",  # a renamed or misspelt key
        "python -m hierot.train -m lam=0,-1",  # one bad value of a sweep
        "python -m hierot.evaluate ckpt=x decode=greedy",
        "python -m hierot.predict ckpt=x images=y topk=3",
        "python -m hierot.predict ckpt=x images=y decode=[crm,greedy]",
    ],
)
def test_a_command_line_with_a_wrong_key_or_value_fails_the_check(command):
    with pytest.raises(ConfigError):
        check_command(command)


def test_the_command_lines_are_found():
    found = commands()
    assert len(found) > 40 and {c.split()[2] for _, c in found} >= {
        "hierot.train", "hierot.evaluate", "hierot.transfer"
    }  # fmt: skip


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
    pytest.importorskip("sphinx")
    run = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "html" / "configuration.html").is_file()
    # the config-group table is generated from hierot/conf at every build
    table = (ROOT / "docs" / "generated" / "config_groups.md").read_text()
    assert "| `logger` | `mlflow` |" in table and "| `dist` | `fastft` (default) |" in table
    # the pages that define objectives, distances and metrics write them as math: MathJax
    # nodes, and no "$" left in the text outside code (a formula MyST did not parse)
    for page in ("objectives", "evaluation", "design"):
        html = (tmp_path / "html" / f"{page}.html").read_text()
        body = html.split('role="main"', 1)[1]
        formulas = re.findall(r'<(?:span|div) class="math notranslate nohighlight">', body)
        assert len(formulas) >= 5, (page, len(formulas))
        text = re.sub(r"<pre\b.*?</pre>|<code\b.*?</code>", "", body, flags=re.S)
        text = re.sub(r'<(span|div) class="math[^"]*">.*?</\1>', "", text, flags=re.S)
        assert "$" not in re.sub(r"<[^>]+>", "", text), page


def test_the_results_pages_are_the_rendering_of_their_csvs():
    # CI re-renders every measured table from the committed CSVs; a hand edit of a table
    # (or a CSV without its page re-rendered) fails here
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_results", ROOT / "scripts" / "render_results.py"
    )
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)  # type: ignore[union-attr]
    assert render.stale_pages() == []
    assert len(list((ROOT / "docs" / "results").glob("*.csv"))) >= 15


def test_a_results_csv_renders_its_environment_once_and_its_rows(tmp_path):
    from hierot.results import read_results, render_page, write_results

    env = {"machine": "CPU X (4 cores)", "torch": "2.14.1", "commit": "abc1234", "date": "D"}
    rows = [{"method": "l2", "ms": "1.5"}, {"method": "a|b <c>", "ms": ""}]
    write_results(tmp_path / "t.csv", rows, "python scripts/x.py --csv t.csv", ["a note"], env)
    meta, columns, read = read_results(tmp_path / "t.csv")
    assert meta == {**env, "command": "python scripts/x.py --csv t.csv", "note": "a note"}
    assert columns == ["method", "ms"] and read == rows
    page = "# Page\n\n<!-- table: t.csv -->\nold numbers\n<!-- end table -->\n\ntext\n"
    rendered = render_page(page, tmp_path)
    assert rendered.count("Measured on CPU X (4 cores), torch 2.14.1, commit abc1234, D") == 1
    assert "| l2 | 1.5 |" in rendered and "| a\\|b &lt;c> |  |" in rendered
    assert "old numbers" not in rendered and rendered.endswith("<!-- end table -->\n\ntext\n")
    assert render_page(rendered, tmp_path) == rendered  # rendering twice changes nothing
