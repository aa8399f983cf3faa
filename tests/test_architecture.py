"""The package's shape: layers that import only downwards, no cycles, no private names
across modules, plain models, a short training loop, and references that lead somewhere."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "passion_kit"

# Lower layers first; a module may import its own layer and those below it.
LAYERS = [
    {"config", "io"},
    {"data"},
    {"models"},
    {"method", "fast"},
    {"balancing"},
    {"objectives"},
    {"engine"},
    {"lessons"},
    {"reproduce"},
    {"__main__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[ast.ImportFrom | ast.Import]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def _targets(node, own: str, modules: dict[str, Path]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each passion_kit module ``node`` imports."""
    if isinstance(node, ast.Import):
        return [(a.name, []) for a in node.names if a.name.startswith("passion_kit")]
    base = node.module or ""
    if node.level:  # relative import
        package = own.split(".")[: -node.level] if own in modules else own.split(".")
        base = ".".join(package + ([base] if base else []))
    if not base.startswith("passion_kit"):
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append((sub, []) if sub in modules else (base, [alias.name]))
    return out


def _graph() -> dict[str, dict[str, list[str]]]:
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = {}
    for name, path in modules.items():
        edges: dict[str, list[str]] = {}
        for node in _imports(path):
            for target, names in _targets(node, name, modules):
                if target != "passion_kit":  # the package facade (its __version__)
                    edges.setdefault(target, []).extend(names)
        graph[name] = edges
    return graph


def _layer(module: str) -> int:
    if module == "passion_kit":
        return len(LAYERS)
    top = module.split(".")[1]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


def test_every_module_imports_only_its_own_layer_and_those_below():
    upward = [
        f"{a} -> {b}"
        for a, edges in _graph().items()
        for b in edges
        if a != "passion_kit" and _layer(b) > _layer(a)
    ]
    assert not upward, upward


def test_no_import_cycle_between_the_package_modules():
    graph = {a: set(edges) - {a} for a, edges in _graph().items() if a != "passion_kit"}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError(" -> ".join([*path, node, nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])


def test_no_module_uses_another_modules_private_name():
    used = []
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in _imports(path):
            for target, names in _targets(node, name, modules):
                if target != name:
                    used += [f"{name}: {target}.{n}" for n in names if n.startswith("_")]
                if isinstance(node, ast.Import):
                    for a in node.names:
                        aliases[a.asname or a.name] = a.name
                else:
                    for a in node.names:
                        if f"{target}.{a.name}" in modules:
                            aliases[a.asname or a.name] = f"{target}.{a.name}"
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                used.append(f"{name}: {aliases[node.value.id]}.{node.attr}")
    assert not used, used


def test_the_models_are_plain_pytorch():
    for path in (PACKAGE / "models").glob("*.py"):
        text = path.read_text()
        assert "autograd.Function" not in text, path


def test_fit_reads_in_one_screen():
    tree = ast.parse((PACKAGE / "engine" / "train.py").read_text())
    (fit,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fit"]
    assert fit.end_lineno - fit.lineno + 1 <= 80


def _headings() -> dict[str, set[str]]:
    """Section numbers ('A.4', 'C', ...) of each docs/*.md file's headings."""
    out = {}
    for doc in (ROOT / "docs").glob("*.md"):
        found = re.findall(r"^#+ ([A-G](?:\.\d+)?)[. ]", doc.read_text(), re.M)
        out[doc.name] = set(found)
    return out


def _texts():
    for pattern in ("passion_kit/**/*.py", "benchmarks/*.py", "data_scripts/*.py", "tests/**/*.py"):
        yield from ROOT.glob(pattern)
    yield from (ROOT / "notebooks").glob("*.ipynb")
    yield from (ROOT / "docs").glob("*.md")
    yield ROOT / "README.md"


def test_every_section_reference_leads_to_a_heading_in_the_docs():
    headings = _headings()
    assert {"A.4", "C.5", "D.3", "G.2"} <= headings["method.md"]
    broken = []
    for path in _texts():
        text = path.read_text()
        if path.name != "test_architecture.py":
            assert not re.search(r"\bspec [A-G]\b|\bspec [A-G]\.\d", text), f"{path}: 'spec X.Y'"
            for doc in ("DESIGN.md", "MYOPS.md", "PASSION_SPEC", "../" + "shared"):
                assert doc not in text, f"{path} names {doc}, which the repository does not hold"
        for doc, refs in re.findall(r"docs/(\w+\.md) ((?:[A-G](?:\.\d+)?(?:, |-| and )?)+)", text):
            for ref in re.findall(r"[A-G](?:\.\d+)?", refs):
                if ref not in headings.get(doc, set()):
                    broken.append(f"{path.relative_to(ROOT)}: docs/{doc} {ref}")
    assert not broken, broken


@pytest.mark.parametrize("limit", [160])
def test_the_readme_is_a_front_door(limit):
    assert len((ROOT / "README.md").read_text().splitlines()) <= limit
