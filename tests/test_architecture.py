"""The package's shape (docs/architecture.md): no import cycle among rubric_rl modules, function-level imports
included, and no module over 500 lines without a reason in its docstring.

The import graph is read from the source (``ast``), not by importing: every ``import`` and ``from ... import``
anywhere in a module (top level, inside functions, under ``if TYPE_CHECKING``, in ``try``), relative or
absolute. Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so it is an edge to each package on the way
that is not the importer's own package (those are already being imported when the importer runs).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "rubric_rl"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 500
REASON = "Over 500 lines because"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(importer: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name>`` written in ``importer``."""
    if not level:
        return name or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imported_names(mod: str, path: Path, known: set[str]) -> set[str]:
    """The rubric_rl modules ``mod`` imports (the nearest existing module of each imported name)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(mod, is_package, node.level, node.module)
            for alias in node.names:  # ``from pkg import sub`` imports the submodule when there is one
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else base)
    out = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over rubric_rl, with the packages each import runs on the way."""
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        own = {mod.rsplit(".", k)[0] for k in range(1, mod.count(".") + 1)}  # mod's own packages
        if path.name == "__init__.py":
            own.add(mod)
        edges = set()
        for target in imported_names(mod, path, known):
            parts = target.split(".")
            for k in range(1, len(parts) + 1):
                step = ".".join(parts[:k])
                if step in known and step not in own:
                    edges.add(step)
        edges.discard(mod)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (``[a, b, ..., a]``) of the graph, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "rubric_rl.errors" in graph["rubric_rl.jsonl"]  # module level, relative
    assert "rubric_rl.evaluate.run" in graph["rubric_rl.calibrate"]  # function level, relative, a submodule
    assert "rubric_rl.evaluate" in graph["rubric_rl.calibrate"]  # the package __init__ the import runs
    assert "rubric_rl.evaluate" not in graph["rubric_rl.evaluate.run"]  # its own package is already running
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_over_500_lines_without_a_reason():
    reason = re.compile(r"(^|[.!?:]\s)" + REASON)
    long = []
    for path in modules().values():
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        doc = " ".join((ast.get_docstring(ast.parse(text)) or "").split())
        if n > MAX_LINES and not reason.search(doc):
            long.append(f"{path.relative_to(ROOT.parent)}: {n} lines")
    assert not long, (f"modules over {MAX_LINES} lines without a sentence starting with {REASON!r} in their "
                      "docstring: " + ", ".join(long))


def _map_paths(text: str) -> set[str]:
    """Module paths named in the first column of docs/architecture.md's module map ("a/{b,c}.py", "a/b.py, c.py"
    = a/b.py and a/c.py)."""
    section = text.split("## 2. Module map", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        folder = ""
        for token in re.findall(r"`([^`]+)`", cell):
            m = re.fullmatch(r"(.*?)\{([^}]*)\}(\.py)", token)
            names = [f"{m.group(1)}{n}{m.group(3)}" for n in m.group(2).split(",")] if m else [token]
            for name in names:
                if "/" in name:
                    folder = name.rsplit("/", 1)[0] + "/"
                elif folder:
                    name = folder + name
                named.add(name)
    return named


def test_the_module_map_names_every_module_and_only_real_ones():
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = _map_paths(doc)
    real = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")}
    missing = sorted(p for p in real - named if not p.endswith("__init__.py"))
    stale = sorted(named - real)
    assert not missing, f"modules the map in docs/architecture.md does not name: {missing}"
    assert not stale, f"docs/architecture.md names modules that do not exist: {stale}"


def test_the_map_reader_expands_braces_and_shared_folders():
    text = "## 2. Module map\n| `a/{b,c}.py` | x |\n| `d/e.py`, `f.py` | y |\n| `g.py` | z |\n## 3. next\n| `h.py` |"
    assert _map_paths(text) == {"a/b.py", "a/c.py", "d/e.py", "d/f.py", "g.py"}
