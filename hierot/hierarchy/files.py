"""Readers for hierarchy files: nested JSON/YAML, CSV/TSV paths, whitespace edge lists."""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from hierot.errors import HierarchyError
from hierot.hierarchy.edge import Edge

FORMATS = ("json", "yaml", "csv", "tsv", "edges")
_BY_SUFFIX = {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv", ".tsv": "tsv"}


def detect_format(path: str | PathLike) -> str:
    """The format a file's extension implies; anything unknown is an edge list."""
    return _BY_SUFFIX.get(Path(path).suffix.lower(), "edges")


@dataclass
class TreeText:
    """A hierarchy file parsed but not yet a tree: ``nested`` (JSON/YAML), ``paths`` (CSV/TSV
    rows, top level first, with ``locations`` the ``file:line`` of each) or ``edges``."""

    kind: str
    name: str
    nested: object = None
    paths: list[list[str]] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)


def read_tree_file(path: str | PathLike, format: str | None = None) -> TreeText:
    """Read and parse ``path``; every problem is a one-line ``HierarchyError``. The format
    follows the extension unless ``format`` is given (``detect_format``)."""
    name = str(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise HierarchyError(f"{name}: unknown hierarchy format '{fmt}' (one of {FORMATS})")
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HierarchyError(f"{name}: hierarchy file not found") from None
    except IsADirectoryError:
        raise HierarchyError(f"{name}: is a directory, not a hierarchy file") from None
    except UnicodeDecodeError as e:
        raise HierarchyError(f"{name}: not a UTF-8 text file ({e.reason})") from None
    except OSError as e:
        raise HierarchyError(f"{name}: cannot read hierarchy file ({e.strerror})") from None
    if not text.strip():
        raise HierarchyError(f"{name}: empty hierarchy file")
    if fmt == "json":
        return TreeText("nested", name, nested=_load_json(text, name))
    if fmt == "yaml":
        return TreeText("nested", name, nested=_load_yaml(text, name))
    if fmt in ("csv", "tsv"):
        paths, locations = _read_table(text, name, "," if fmt == "csv" else "\t")
        return TreeText("paths", name, paths=paths, locations=locations)
    return TreeText("edges", name, edges=_read_edges(text, name))


def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(Exception):
    pass


def _load_json(text: str, name: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as e:
        raise HierarchyError(f"{name}:{e.lineno}: malformed JSON: {e.msg}") from None
    except _DuplicateKey as e:
        raise HierarchyError(f"{name}: node '{e.args[0]}' appears twice in one mapping") from None


@functools.cache
def _unique_key_loader() -> type:
    """A SafeLoader that refuses a key repeated in one mapping (YAML silently keeps the
    last); built on first use, so that the core imports no YAML."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise HierarchyError(
                        f"{self.name}:{key_node.start_mark.line + 1}: node '{key}' appears "
                        f"twice in one mapping (first at line {seen[key]})"
                    )
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _load_yaml(text: str, name: str) -> object:
    import yaml

    loader = _unique_key_loader()(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise HierarchyError(f"{name}{line}: malformed YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise HierarchyError(f"{name}: malformed YAML: {e}") from None
    finally:
        loader.dispose()


def _content_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for lines that are neither blank nor ``#`` comments."""
    return [
        (i, line)
        for i, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _read_table(text: str, name: str, delimiter: str) -> tuple[list[list[str]], list[str]]:
    lines = _content_lines(text)
    paths, locations = [], []
    reader = csv.reader((line for _, line in lines), delimiter=delimiter, strict=True)
    try:
        rows = list(reader)
    except csv.Error as e:
        # reader.line_num counts the content lines read so far, the bad one included
        lineno = lines[max(0, min(reader.line_num, len(lines)) - 1)][0] if lines else 1
        raise HierarchyError(
            f"{name}:{lineno}: malformed {'CSV' if delimiter == ',' else 'TSV'}: {e}"
        ) from None
    for (lineno, _), row in zip(lines, rows):
        cells = [c.strip() for c in row]
        while cells and not cells[-1]:
            cells.pop()  # trailing delimiters leave empty cells on short (unbalanced) rows
        if any(not c for c in cells):
            raise HierarchyError(
                f"{name}:{lineno}: empty cell in row {row!r}; each row lists the path from the "
                "top level down to the leaf"
            )
        paths.append(cells)
        locations.append(f"{name}:{lineno}")
    return paths, locations


def _read_edges(text: str, name: str) -> list[Edge]:
    edges = []
    for lineno, line in _content_lines(text):
        parts = line.split()
        location = f"{name}:{lineno}"
        if len(parts) not in (2, 3):
            raise HierarchyError(
                f"{location}: expected 'parent child [weight]', got {len(parts)} fields: "
                f"{line.strip()!r}"
            )
        weight = 1.0
        if len(parts) == 3:
            try:
                weight = float(parts[2])
            except ValueError:
                message = f"{location}: edge weight {parts[2]!r} is not a number"
                raise HierarchyError(message) from None
        edges.append(Edge(parts[0], parts[1], weight, location))
    return edges
