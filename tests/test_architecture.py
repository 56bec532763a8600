"""Imports run one way (docs/architecture.md): no module imports a layer above its own, no two
modules import each other (directly or round a longer circle), and no module reaches for
another module's underscore name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src" / "dawntrain"

# Lowest first; a module may import its own layer and the ones below it.
LAYERS = [
    {"dawntrain", "errors", "seeds", "files"},
    {"config"},
    {"runtime"},
    {"data"},
    {"models"},
    {"engine"},
    {"train"},
    {"infer"},
    {"analysis"},
    {"bench"},
    {"cli", "__main__"},
]


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "dawntrain"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it there")


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> list[tuple[str, list[str], int]]:
    """(imported dawntrain module, names taken from it, line) for every import in the file,
    those inside functions and TYPE_CHECKING blocks included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root.name:
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            if base.split(".")[0] != root.name:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if (root.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or (
                    root.parent / Path(*sub.split("."))
                ).is_dir():
                    found.append((sub, [], node.lineno))  # a module imported from its package
                else:
                    found.append((base, [alias.name], node.lineno))
    return found


def private_attribute_uses(path: Path, root: Path) -> list[tuple[str, int]]:
    """`alias._name` where alias names a dawntrain module imported in this file."""
    tree = ast.parse(path.read_text())
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(root.name):
            aliases |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name.startswith(root.name)}
    return [
        (f"{node.value.id}.{node.attr}", node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    ]


def problems(root: Path) -> list[str]:
    found, graph = [], {}
    for path in sorted(root.rglob("*.py")):
        me = module_name(path, root)
        edges = graph.setdefault(me, set())
        for target, names, line in imports(path, root):
            where = f"{path.relative_to(root.parent)}:{line}"
            if layer_of(target) > layer_of(me):
                found.append(f"{where}: {me} imports {target}, a layer above it")
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{where}: {me} imports {target}'s private {name}")
            if target != me and not me.startswith(target + "."):
                edges.add(target)
        for attr, line in private_attribute_uses(path, root):
            found.append(f"{path.relative_to(root.parent)}:{line}: {me} uses private {attr}")
    found += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One path round each strongly connected set of modules (Tarjan's algorithm)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_imports_run_one_way_without_circles_or_private_names():
    assert problems(SRC) == []


@pytest.fixture
def fake_tree(tmp_path):
    root = tmp_path / "dawntrain"
    for package in ("data", "train"):
        (root / package).mkdir(parents=True)
        (root / package / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    return root


def test_the_check_finds_an_upward_import_a_circle_and_a_private_name(fake_tree):
    (fake_tree / "data" / "a.py").write_text("from dawntrain.train import loop\n")
    (fake_tree / "train" / "loop.py").write_text(
        "from dawntrain.train import other\nfrom dawntrain.data.b import _helper\n"
    )
    (fake_tree / "train" / "other.py").write_text(
        "import dawntrain.train.loop as loop_module\nfrom dawntrain.data import b\nb._x\n"
    )
    (fake_tree / "data" / "b.py").write_text("def _helper(): ...\n")
    found = "\n".join(problems(fake_tree))
    assert "dawntrain.data.a imports dawntrain.train.loop, a layer above it" in found
    assert "imports dawntrain.data.b's private _helper" in found
    assert "uses private b._x" in found
    assert "import circle: dawntrain.train.loop -> dawntrain.train.other" in found


def test_no_function_is_longer_than_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert not long, "split these: " + ", ".join(long)
