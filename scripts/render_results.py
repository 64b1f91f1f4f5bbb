"""Fill the measured tables of the documentation from their results CSVs.

Each ``<!-- table: <file>.csv -->`` ... ``<!-- end table -->`` block of a page of ``docs/``
(the CSV's path relative to the page, the CSVs kept in ``docs/results/``) becomes the
environment the CSV was measured in and its table (``hierot.results.render_page``). The
scripts in ``scripts/`` write the CSVs; nobody edits the tables by hand.

    python scripts/render_results.py           # rewrite the pages
    python scripts/render_results.py --check   # exit 1 if a page differs from its CSVs (CI)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hierot.results import render_page

DOCS = Path(__file__).resolve().parents[1] / "docs"


def stale_pages(folder: Path = DOCS, write: bool = False) -> list[Path]:
    """The pages whose tables differ from their CSVs (rewritten when ``write``)."""
    stale = []
    for page in sorted(folder.rglob("*.md")):
        if "_build" in page.parts:
            continue
        text = page.read_text()
        rendered = render_page(text, page.parent)
        if rendered != text:
            stale.append(page)
            if write:
                page.write_text(rendered)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale pages")
    args = parser.parse_args()
    stale = stale_pages(write=not args.check)
    for page in stale:
        print(f"{page}: {'differs from its CSVs' if args.check else 'rewritten'}")
    if args.check and stale:
        sys.exit(1)


if __name__ == "__main__":
    main()
