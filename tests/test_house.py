"""The shape of the package: the config layer imports no component, no module reaches
itself through its imports, and no function body runs past 50 lines."""

import ast
from pathlib import Path

import hierot

PACKAGE = Path(hierot.__file__).parent
# what the config layer may import: helpers that know no component
CONFIG_LAYER = {"hierot.arguments", "hierot.checks", "hierot.errors", "hierot.overrides"}


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """hierot module -> the hierot modules it imports (anywhere in its body)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        edges[name] = {m for m in found if m in modules and m != name and m != "hierot"}
    return edges


def test_the_config_layer_imports_no_component():
    assert imports()["hierot.config"] <= CONFIG_LAYER


def test_no_module_is_reached_again_from_itself():
    edges = imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(edges[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo += edges[m]
        return seen

    assert [m for m in edges if m in reaches(m)] == []


MAX_BODY_LINES = 50


def test_no_function_body_is_longer_than_50_lines():
    # the body after the signature and docstring: long argument lists and Args sections
    # are documentation, not logic
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if body and body[-1].end_lineno - body[0].lineno + 1 > MAX_BODY_LINES:
                long.append(f"{module_name(path)}.{node.name}")
    assert long == []
