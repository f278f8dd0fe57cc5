"""The package plan, checked (docs/architecture.md): who may import whom, no import cycle
(imports under TYPE_CHECKING and inside functions count), and a pure core and model that
import no asyncio, Kafka client or websockets."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IO = ("asyncio", "aiokafka", "websockets")

# Sub-package -> the first-party areas it may import (itself always). `ground` is
# streamer/{settings,metrics,lifecycle,...}.py: importable from everywhere.
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "streamer.core": {"model"},
    "streamer.ground": {"model", "streamer.core"},
    "streamer.feed": {"model", "streamer.core", "streamer.ground"},
    "streamer.kafka": {"model", "streamer.core", "streamer.ground"},
    "streamer.serve": {
        "model",
        "streamer.core",
        "streamer.ground",
        "streamer.feed",
        "streamer.kafka",
    },
    "streamer.tools": {"streamer.core", "streamer.ground", "streamer.kafka"},
    "streamer.jobs": {
        "model",
        "streamer.core",
        "streamer.ground",
        "streamer.feed",
        "streamer.kafka",
        "streamer.serve",
    },
    "streamer.cli": {
        "model",
        "streamer.core",
        "streamer.ground",
        "streamer.feed",
        "streamer.kafka",
        "streamer.serve",
        "streamer.jobs",
        "streamer.tools",
    },
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def area(module: str) -> str:
    if module == "streamer.__main__":  # `python -m streamer`: the CLI's entry point
        return "streamer.cli"
    if module == "streamer" or module.startswith("model"):
        return "model" if module.startswith("model") else "streamer.ground"
    parts = module.split(".")
    if len(parts) >= 2 and f"streamer.{parts[1]}" in ALLOWED:
        return f"streamer.{parts[1]}"
    return "streamer.ground"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (TYPE_CHECKING and functions too)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                pkg = me.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0)]
                base = ".".join([*pkg, base] if base else pkg)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from x import module`
    return out


def first_party() -> dict[str, set[str]]:
    files = [*ROOT.glob("model/**/*.py"), *ROOT.glob("streamer/**/*.py")]
    mods = {module_name(f): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, f in mods.items():
        graph[name] = {m for m in imports_of(f) if m in mods and m != name}
    return graph


GRAPH = first_party()


def test_every_import_follows_the_plan() -> None:
    wrong = [
        f"{mod} imports {dep}"
        for mod, deps in GRAPH.items()
        for dep in deps
        if area(dep) != area(mod)
        and area(dep) not in ALLOWED[area(mod)]
        and not dep.startswith(area(mod))
    ]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    # Package __init__ re-exports make a package and its modules import each other; the
    # cycle check is between modules.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("top", ["model", "streamer/core"])
def test_pure_code_imports_no_io(top: str) -> None:
    bad = [
        f"{f.relative_to(ROOT)} imports {m}"
        for f in (ROOT / top).glob("**/*.py")
        for m in imports_of(f)
        if m.split(".")[0] in IO
    ]
    assert not bad, "\n".join(bad)


def test_modules_stay_readable() -> None:
    """No module of streamer/ or model/ over ~400 lines (docs/architecture.md)."""
    long = {
        str(f.relative_to(ROOT)): n
        for f in [*ROOT.glob("model/**/*.py"), *ROOT.glob("streamer/**/*.py")]
        if (n := len(f.read_text().splitlines())) > 440
    }
    assert not long, long


def test_model_tests_need_no_streamer() -> None:
    """tests/model mirrors model/, which imports nothing from streamer/: so do its tests (a
    test that crosses both lives at the top of tests/)."""
    wrong = [
        str(f.relative_to(ROOT))
        for f in ROOT.glob("tests/model/**/*.py")
        if any(m == "streamer" or m.startswith("streamer.") for m in imports_of(f))
    ]
    assert not wrong, wrong
