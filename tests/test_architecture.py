"""The package's shape (docs/architecture.md): no import cycle among rubric_rl modules, function-level imports
included, no module over 500 lines without a reason in its docstring, and the module map's names and imports
column true to the code.

The import graph is read from the source (``ast``), not by importing: every ``import`` and ``from ... import``
anywhere in a module (top level, inside functions, under ``if TYPE_CHECKING``, in ``try``; not under
``if __name__ == "__main__"``, a script's entry point that never runs on import), relative or absolute. Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so it is an edge to each package on the way
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


def _is_main_guard(node) -> bool:
    """``if __name__ == "__main__":``, a script's entry point: what it imports never runs when the module is
    imported (run as ``python -m``, the module is ``__main__``, another module than the imported one)."""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def import_nodes(path: Path):
    """``(import statement, inside a function?)`` for every import of the module at ``path``, at any depth, except
    under a ``__main__`` guard."""
    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            yield from visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                      ast.Lambda)))

    yield from visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False)


def imported_names(mod: str, path: Path, known: set[str]) -> set[str]:
    """The rubric_rl modules ``mod`` imports (the nearest existing module of each imported name)."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node, _ in import_nodes(path):
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
    assert "rubric_rl.cli" not in graph["rubric_rl.teachers.server"]  # under its __main__ guard: a script entry
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


# ---------------------------------------------------------------------------------------------- the imports column
def imports_by_kind(mod: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """The rubric_rl modules ``mod`` names in its imports: (those imported when it is imported, those imported only
    inside a function). Class bodies, ``try`` and ``if`` at module level run at import time; the package steps on
    the way (``a`` of ``a.b``) are not listed, as the map does not list them."""
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    inner: set[str] = set()

    def names(node) -> set[str]:
        if isinstance(node, ast.Import):
            found = {alias.name for alias in node.names}
        else:
            base = _resolve(mod, is_package, node.level, node.module)
            found = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
        out = set()
        for target in found:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != mod:
                out.add(target)
        return out

    for node, in_function in import_nodes(path):
        (inner if in_function else top).update(names(node))
    return top, inner - top


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside braces and parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "{("
        depth -= ch in "})"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _expand(name: str) -> list[str]:
    m = re.fullmatch(r"(.*?)\{([^}]*)\}(.*)", name)
    return [f"{m.group(1)}{n.strip()}{m.group(3)}" for n in m.group(2).split(",")] if m else [name]


def _map_imports(text: str) -> dict[str, set[str]]:
    """The imports column of docs/architecture.md's module map: ``{module path: {"errors", "*models", ...}}``.

    The cell is ``;``-separated groups of ``,``-separated names (relative to rubric_rl; ``rubric_rl`` is the package
    itself; ``a.{b,c}`` is ``a.b, a.c``; a leading ``*``: imported inside a function; ``**bold**`` is emphasis; ``—``:
    none). A group that ends with ``(x, y: comment)`` is the imports of the row's files ``x.py`` and ``y.py`` only;
    any other group is every file of the row's."""
    section = text.split("## 2. Module map", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = line.strip().strip("|").split("|")
        files = sorted(_map_paths("## 2. Module map\n|" + cells[0] + "|\n"))
        out.update({f: set() for f in files})
        cell = cells[-1].strip().replace("**", "").replace("`", "")
        if cell in ("—", "-", ""):
            continue
        for group in _split_top(cell, ";"):
            group = group.strip()
            only = files
            m = re.fullmatch(r"(.*?)\s*\(([^)]*)\)", group)
            if m:
                group = m.group(1)
                stems = [s.split(":")[0].strip() for s in m.group(2).split(",")]
                only = [f for f in files if f.rsplit("/", 1)[-1][:-3] in stems]
                assert len(only) == len(stems), f"{line[:60]}: ({m.group(2)}) names a file the row does not"
            for item in _split_top(group, ","):
                for name in _expand(item.strip()):
                    for f in only:
                        out[f].add(name)
    return out


def test_the_map_reader_reads_the_imports_column():
    text = ("## 2. Module map\n| `a.py` | x | y | b, c.{d,e}; *f |\n| `g/{h,i}.py` | x | y | j; k (h); *l (i: why) |\n"
            "| `m.py` | x | y | — |\n## 3.")
    assert _map_imports(text) == {"a.py": {"b", "c.d", "c.e", "*f"}, "g/h.py": {"j", "k"}, "g/i.py": {"j", "*l"},
                                  "m.py": set()}


def test_the_maps_imports_column_is_the_code():
    """Each row's imports column names what the module imports, no more, no less: ``*`` exactly on the modules it
    imports only inside a function."""
    doc = (ROOT.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    mods = modules()
    known = set(mods)
    by_path = {str(p.relative_to(ROOT)): (m, p) for m, p in mods.items()}
    wrong = []
    for path, listed in sorted(_map_imports(doc).items()):
        mod, file = by_path[path]
        top, inner = imports_by_kind(mod, file, known)
        short = lambda m: m if m == PACKAGE else m[len(PACKAGE) + 1:]  # noqa: E731
        real = {short(m) for m in top} | {"*" + short(m) for m in inner}
        if listed != real:
            wrong.append(f"{path}: listed but not imported so: {sorted(listed - real)}; imported so but not listed: "
                         f"{sorted(real - listed)}")
    assert not wrong, "docs/architecture.md's imports column is wrong:\n" + "\n".join(wrong)


# ---------------------------------------------------------------------------------------------- private names
# ``from module import _name`` across modules of the package, allowed only with the reason written here
# ({(importer, "module._name"): "why"}). Names private to a module are its own business; what another module needs
# is public, under a name that says what it is.
PRIVATE_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {}


def private_imports() -> set[tuple[str, str]]:
    """``(importer, "module._name")`` for every ``from module import _name`` of a rubric_rl module from another one
    (a private submodule is a module, not a name, and ``__dunder__`` names are not private)."""
    mods = modules()
    found = set()
    for mod, path in mods.items():
        for node, _ in import_nodes(path):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _resolve(mod, path.name == "__init__.py", node.level, node.module)
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and f"{base}.{name}" not in mods:
                    found.add((mod, f"{base}.{name}"))
    return found


def test_no_private_cross_module_import():
    found = private_imports()
    unexplained = sorted(found - set(PRIVATE_IMPORTS_ALLOWED))
    assert not unexplained, "private names imported from another module (make them public, or allow one with a " \
                            "reason in PRIVATE_IMPORTS_ALLOWED): " + ", ".join(f"{a} <- {b}" for a, b in unexplained)
    stale = sorted(set(PRIVATE_IMPORTS_ALLOWED) - found)
    assert not stale, f"PRIVATE_IMPORTS_ALLOWED names imports that no longer exist: {stale}"


# ---------------------------------------------------------------------------------------------- long functions
MAX_FUNCTION_LINES = 80
# A function whose body is longer, allowed only with the reason written here ({"path.py:qualified.name": "why"}).
LONG_FUNCTIONS_ALLOWED: dict[str, str] = {}


def function_lengths() -> dict[str, int]:
    """``{"path.py:Class.method": lines}`` for every function and method of the package (nested ones too): its body
    from the first statement after the docstring to its last line (a docstring documents, it holds no steps)."""
    lengths = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = str(path.relative_to(ROOT))

        def visit(node, prefix: str):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body = child.body
                    first = body[1] if (len(body) > 1 and isinstance(body[0], ast.Expr)
                                        and isinstance(body[0].value, ast.Constant)
                                        and isinstance(body[0].value.value, str)) else body[0]
                    lengths[f"{rel}:{prefix}{child.name}"] = child.end_lineno - first.lineno + 1
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")

        visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return lengths


def test_no_function_over_80_lines_without_a_reason():
    lengths = function_lengths()
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    unexplained = sorted(f"{name} ({n} lines)" for name, n in long.items() if name not in LONG_FUNCTIONS_ALLOWED)
    assert not unexplained, (f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps, or allow one "
                             "with a reason in LONG_FUNCTIONS_ALLOWED): " + ", ".join(unexplained))
    stale = sorted(set(LONG_FUNCTIONS_ALLOWED) - set(long))
    assert not stale, f"LONG_FUNCTIONS_ALLOWED names functions that are no longer long (or gone): {stale}"


def test_function_lengths_count_the_body_after_the_docstring():
    lengths = function_lengths()
    assert lengths["outcome.py:Reason.__str__"] == 1  # a docstring-less one-liner
    assert lengths["outcome.py:classify"] == 4  # its docstring is not counted
    assert "teachers/server.py:create_app.chat_completions" in lengths  # nested functions count on their own too


DISK_CALLS = {"exists", "is_file", "is_dir", "open", "read_text", "read_bytes", "stat", "resolve", "iterdir",
              "glob", "listdir", "isfile", "isdir"}


def disk_reads_in_post_init(source: str) -> list[str]:
    """``Class.__post_init__: call`` for each filesystem call in a dataclass's ``__post_init__``."""
    found = []
    for cls in ast.walk(ast.parse(source)):
        if not isinstance(cls, ast.ClassDef):
            continue
        for fn in cls.body:
            if isinstance(fn, ast.FunctionDef) and fn.name == "__post_init__":
                for node in ast.walk(fn):
                    if isinstance(node, ast.Call):
                        f = node.func
                        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                        if name in DISK_CALLS:
                            found.append(f"{cls.name}.__post_init__: {name}()")
    return found


def test_configs_read_no_file_in_post_init():
    """A config is values; the files it names are checked by preflight at the command's start (issue 21)."""
    bad = [f"{p.relative_to(ROOT.parent)}: {x}" for p in sorted((ROOT / "configs").glob("*.py"))
           for x in disk_reads_in_post_init(p.read_text())]
    bad += [f"config.py: {x}" for x in disk_reads_in_post_init((ROOT / "config.py").read_text())]
    assert not bad, bad


def test_the_post_init_check_sees_a_disk_read():
    src = "class C:\n    def __post_init__(self):\n        if Path(self.p).is_file():\n            pass\n"
    assert disk_reads_in_post_init(src) == ["C.__post_init__: is_file()"]
