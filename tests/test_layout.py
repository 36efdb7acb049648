"""The package's shape: dependencies run one way, stage modules never import one another, there
is no import cycle, and no module reaches into another's private names.

Read from the source with `ast` (every import counts, module-level or inside a function: a lazy
import is still a dependency), so the test needs no TensorFlow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# Floors, top to bottom (pipeline/DESIGN.md, "Floors"): a module may import its own floor or any
# floor below it, except that a stage module imports no other stage module. Each floor is a set of
# folders (sub-packages) of pipeline/; the CLI is the one module at the top.
FLOORS = {
    "entry": {"cli"},
    "orchestration": {"run"},
    "stages": {"stages"},
    "shared": {
        "data",
        "models",
        "training",
        "folding",
        "tflite",
        "analysis",
        "report",
        "runtimes",
        "fit",
    },
    "store": {"store"},
    "core": {"core", "__init__"},
}
ORDER = list(FLOORS)

# Within the shared floor, which rooms each room may import (its __init__ docstring says the same).
SHARED_MAY_IMPORT = {
    "data": set(),
    "models": set(),
    "training": {"data", "models"},
    "folding": {"models"},
    "tflite": {"models"},
    "runtimes": {"tflite"},
    "analysis": {"tflite", "runtimes"},
    "report": set(),
    "fit": {"tflite", "runtimes", "report"},
}
# The one file allowed past MAX_MODULE_LINES: the stand-alone runner copied to boards as one file.
MAX_MODULE_LINES = 600
ONE_FILE_RUNNERS = {"runtimes.device_runner"}


def _modules() -> dict[str, Path]:
    """'train', 'runtimes.host', … → file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        found[".".join(rel.parts)] = path
    return found


def _room(module: str) -> str:
    return module.split(".")[0]


def _layer(module: str) -> int:
    for i, name in enumerate(ORDER):
        if _room(module) in FLOORS[name]:
            return i
    raise AssertionError(f"pipeline/{module}.py is in no floor of tests/test_layout.py")


def _imports(module: str, path: Path) -> list[tuple[str, set[str], int]]:
    """(imported pipeline module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("pipeline"):
                target = node.module.removeprefix("pipeline").lstrip(".")
            else:
                continue
            names = {a.name for a in node.names}
            if not target:  # `from . import artifacts, files`
                out += [(n, set(), node.lineno) for n in names]
                continue
            out.append((target, names, node.lineno))
            out += [
                (f"{target}.{n}", set(), node.lineno)
                for n in names
                if (PACKAGE / target.replace(".", "/") / f"{n}.py").is_file()
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline."):
                    out.append((alias.name.removeprefix("pipeline."), set(), node.lineno))
    return out


GRAPH = {m: _imports(m, p) for m, p in _modules().items()}


def _known(target: str) -> str | None:
    modules = _modules()
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_is_in_a_floor_and_every_folder_says_what_it_holds():
    for module in _modules():
        _layer(module)
    folders = sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert {p.name for p in folders} == set().union(*FLOORS.values()) - {"__init__"}
    for folder in folders:
        init = folder / "__init__.py"
        assert init.is_file(), f"pipeline/{folder.name}/ has no __init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80, f"pipeline/{folder.name}/__init__.py says too little of what it holds"
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]  # every module has a room


def test_shared_rooms_import_only_the_rooms_they_say():
    problems = []
    for module, imports in GRAPH.items():
        room = _room(module)
        if room not in SHARED_MAY_IMPORT:
            continue
        for target, _, line in imports:
            known = _known(target)
            if known is None:
                continue
            there = _room(known)
            allowed = SHARED_MAY_IMPORT[room] | {room}
            if there in SHARED_MAY_IMPORT and there not in allowed:
                problems.append(f"{module}:{line} imports {known} ({there} is not below {room})")
    assert problems == []


@pytest.mark.parametrize("module", sorted(set(_modules()) - ONE_FILE_RUNNERS))
def test_no_module_is_too_long_to_read(module):
    lines = _modules()[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"pipeline/{module}.py has {lines} lines"


def test_dependencies_run_downward_and_stages_stay_apart():
    problems = []
    for module, imports in GRAPH.items():
        for target, _, line in imports:
            known = _known(target)
            if known is None or known == module:
                continue
            here, there = _layer(module), _layer(known)
            if there < here:
                problems.append(f"{module}:{line} imports {known}, a layer above it")
            if ORDER[here] == "stages" and ORDER[there] == "stages":
                problems.append(f"stage {module}:{line} imports stage {known}")
    assert problems == []


def test_no_import_cycle():
    edges = {m: {k for t, _, _ in imps if (k := _known(t)) and k != m} for m, imps in GRAPH.items()}
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" → ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_module_takes_another_modules_private_names():
    problems = []
    for module, path in _modules().items():
        tree = ast.parse(path.read_text())
        for target, names, line in GRAPH[module]:
            private = sorted(n for n in names if n.startswith("_") and not n.startswith("__"))
            if private and _known(target) != module:
                problems.append(f"{module}:{line} imports {', '.join(private)} from {target}")
        aliases = {
            a.asname or a.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for a in node.names
            if _known(_resolve_alias(module, node, a.name) or "") not in (None, module)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                problems.append(f"{module}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert problems == []


def _resolve_alias(module: str, node, name: str) -> str | None:
    """The pipeline module an imported name refers to, if it is a module."""
    if isinstance(node, ast.Import):
        return name.removeprefix("pipeline.") if name.startswith("pipeline.") else None
    package = module.split(".")[:-1]
    if node.level:
        base = ".".join(
            package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
        )
    elif node.module and node.module.startswith("pipeline"):
        base = node.module.removeprefix("pipeline").lstrip(".")
    else:
        return None
    candidate = f"{base}.{name}".lstrip(".")
    return candidate if candidate in _modules() else None


@pytest.mark.parametrize("module", sorted(_modules()))
def test_functions_fit_on_a_screen(module):
    """No function longer than 60 lines (docstring included): a longer one wants splitting."""
    tree = ast.parse(_modules()[module].read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
