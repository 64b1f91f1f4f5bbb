"""Build the docs site and screenshot its pages in headless Chromium, to look at them.

    python scripts/screenshot_docs.py --mathjax /path/to/es5/tex-mml-chtml.js \
        --out docs/_build/shots index evaluation objectives training

Writes ``<out>/html`` (the site) and ``<out>/<page>.png`` (one screenshot per page, 1280 px
wide by default, the page's top ``--height`` pixels) and prints, per page, how many formulas
MathJax typeset and how many ``$`` signs were left as text (a formula that did not render).

The site loads MathJax from its CDN, which a machine without internet cannot reach: give a
local copy with ``--mathjax`` (``npm pack mathjax@3 && tar xzf mathjax-3*.tgz`` gives
``package/es5/tex-mml-chtml.js``). Needs Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # lets the page's scripts (MathJax) finish before the screenshot or the DOM dump
    "--virtual-time-budget=15000",
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("screenshot_docs: error: no Chromium found (Debian: apt-get install chromium)")


def build(out: Path, mathjax: Path | None) -> Path:
    html = out / "html"
    command = [sys.executable, "-m", "sphinx", "-q", "-b", "html", str(ROOT / "docs"), str(html)]
    if mathjax is not None:
        command += ["-D", f"mathjax_path={mathjax.resolve().as_uri()}"]
    subprocess.run(command, check=True)
    return html


def shoot(browser: str, page: Path, png: Path, width: int, height: int) -> str:
    """Screenshot ``page`` into ``png``; returns the DOM after its scripts ran."""
    with tempfile.TemporaryDirectory() as profile:
        flags = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        subprocess.run([*flags, f"--screenshot={png}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                              page.as_uri()], check=True, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    return dom.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    pages = ["index", "evaluation", "objectives"]
    parser.add_argument("pages", nargs="*", default=pages,
                        help=f"docs/<name>.md pages; default: {' '.join(pages)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_build" / "shots")
    parser.add_argument("--mathjax", type=Path, help="a local MathJax 3 tex-mml-chtml.js")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--no-build", action="store_true", help="reuse <out>/html")
    args = parser.parse_args(argv)
    if args.mathjax is not None and not args.mathjax.is_file():
        parser.error(f"--mathjax {args.mathjax}: no such file")
    browser = chromium()
    args.out.mkdir(parents=True, exist_ok=True)
    html = args.out / "html" if args.no_build else build(args.out, args.mathjax)
    for name in args.pages:
        page = html / f"{name}.html"
        if not page.is_file():
            parser.error(f"{name}: no page {page}")
        png = args.out / f"{name.replace('/', '_')}.png"
        dom = shoot(browser, page, png, args.width, args.height)
        body = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
        text = re.sub(r"<[^>]+>", "", body)
        formulas = len(re.findall(r"<mjx-container\b", dom))
        dollars = text.count("$")
        print(f"{png}  formulas typeset: {formulas}  '$' left as text: {dollars}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
