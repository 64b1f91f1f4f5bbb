"""Sphinx extension: ``docs/generated/config_groups.md``, the table of the config groups
shipped in ``hierot/conf`` (each group's options, default first, and what each option's
file says of itself in its first comment line), written before every build so that it
cannot drift from the configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONF = Path(__file__).resolve().parents[2] / "hierot" / "conf"


def defaults() -> dict[str, str]:
    """Group -> its default option, from ``train.yaml``'s defaults list."""
    out = {}
    for entry in yaml.safe_load((CONF / "train.yaml").read_text()).get("defaults", []):
        if isinstance(entry, dict):
            out.update({str(k): str(v) for k, v in entry.items()})
    return out


def first_comment(path: Path) -> str:
    """The file's leading comment, its lines joined (empty without one)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("# ").strip()
        if not text.startswith("@package"):  # Hydra's directive, not a description
            lines.append(text)
    return " ".join(lines).replace("|", "\\|")


def table() -> str:
    chosen = defaults()
    rows = ["| group | option | what it is |", "| --- | --- | --- |"]
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(group.rglob("*.yaml"))
        default = chosen.get(group.name)
        options.sort(key=lambda p: (p.stem != default, str(p.relative_to(group))))
        for option in options:
            name = str(option.relative_to(group).with_suffix(""))
            mark = " (default)" if name == default else ""
            rows.append(f"| `{group.name}` | `{name}`{mark} | {first_comment(option)} |")
    return "\n".join(rows) + "\n"


def write(app: Any) -> None:
    out = Path(app.srcdir) / "generated" / "config_groups.md"
    out.parent.mkdir(exist_ok=True)
    text = "<!-- written by docs/_ext/config_groups.py from hierot/conf; do not edit -->\n\n"
    text += table()
    if not out.exists() or out.read_text() != text:
        out.write_text(text)


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", write)
    return {"parallel_read_safe": True}
