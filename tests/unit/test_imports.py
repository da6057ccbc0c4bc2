"""The package's layout and import rules, checked statically with ``ast``.

Roles live in subpackages and imports flow one way: the entry points at the top, then
``control``, then ``workers`` and ``library`` (which never import each other), then ``queue``,
then what everything shares (``config``, ``errors``, ``logs``). The rules keep ``videofetchctl``
fast (no database driver, no yt-dlp), the pure modules pure, and the daemon reachable from
exactly one entry point.

Module-level imports are those executed when the module is imported: top-level statements,
including inside top-level ``try``/``if``/``with`` blocks but not ``if TYPE_CHECKING:``. Lazy
imports (inside functions) count for the layering and the cycle check too: a lazy import still
means "this module needs that one". Only ``TYPE_CHECKING`` imports, which never run, are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = "videofetchd"
PKG_DIR = Path(__file__).resolve().parents[2] / PKG
#: every module as a dotted name inside the package: "cli", "queue.store", "queue" (its __init__)
MODULES = sorted(
    ".".join(p.relative_to(PKG_DIR).with_suffix("").parts[:-1]) if p.name == "__init__.py" and p.parent != PKG_DIR
    else ".".join(p.relative_to(PKG_DIR).with_suffix("").parts)
    for p in PKG_DIR.rglob("*.py"))
PACKAGES = {"__init__"} | {m for m in MODULES if (PKG_DIR / m.replace(".", "/") / "__init__.py").exists()}
MAX_LINES = 450  #: hard limit; aim for ~400
MAX_TOP_MODULES = 12

#: a module may import only modules of its own layer or a lower one (and within layer 2,
#: workers and library never import each other)
LAYERS = {"queue": 1, "workers": 2, "library": 2, "control": 3}
SHARED = {"config", "configload", "errors", "logs", "text"}  # layer 0


def _path(module: str) -> Path:
    if module in PACKAGES:
        return PKG_DIR / ("" if module == "__init__" else module.replace(".", "/")) / "__init__.py"
    return PKG_DIR / (module.replace(".", "/") + ".py")


def _package_of(module: str) -> list[str]:
    """The dotted package a module lives in, as parts (``queue.store`` -> ["queue"])."""
    if module == "__init__":
        return []
    return module.split(".") if module in PACKAGES else module.split(".")[:-1]


def _resolve(node: ast.ImportFrom | ast.Import, module: str) -> list[str]:
    """Absolute dotted names an import statement pulls in (``from . import x`` -> ``videofetchd.x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        parts = _package_of(module)
        base = [PKG, *parts[:len(parts) - (node.level - 1)]]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    inner = target[len(PKG) + 1:] if target.startswith(PKG + ".") else ("" if target == PKG else None)
    if inner is not None and (inner == "" or inner in PACKAGES):
        # `from . import config` imports a submodule; `from . import __version__` names the package
        result = []
        for a in node.names:
            sub = f"{inner}.{a.name}" if inner else a.name
            result.append(f"{PKG}.{sub}" if sub in MODULES else target)
        return result
    return [target]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _collect(body: list[ast.stmt], *, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append(stmt)
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                found += _collect(stmt.body, lazy=lazy)
            found += _collect(stmt.orelse, lazy=lazy)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *[h.body for h in stmt.handlers]):
                found += _collect(block, lazy=lazy)
        elif isinstance(stmt, (ast.With, ast.For, ast.While)):
            found += _collect(stmt.body, lazy=lazy)
        elif lazy and isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found += _collect(stmt.body, lazy=lazy)
    return found


def imports(module: str, *, anywhere: bool = False) -> set[str]:
    """Dotted names ``module`` imports at module level (or ``anywhere``, lazily too; never
    ``TYPE_CHECKING`` imports)."""
    path = _path(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in _collect(tree.body, lazy=anywhere):
        names.update(_resolve(node, module))
    return names


def package_imports(module: str, *, anywhere: bool = False) -> set[str]:
    """Modules of the package imported (``"videofetchd"`` itself shows as ``"__init__"``)."""
    result = set()
    for name in imports(module, anywhere=anywhere):
        if name == PKG:
            result.add("__init__")
        elif name.startswith(PKG + "."):
            result.add(name[len(PKG) + 1:])
    return result


def _layer(module: str) -> int:
    if module in SHARED:
        return 0
    return LAYERS.get(module.split(".")[0], 4)  # the entry points at the top level: cli, ctl, daemon, ...


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, BLACK) == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def import_graph() -> dict[str, set[str]]:
    """Every module's imports of other modules, lazy ones included. Edges into package
    ``__init__`` files are left out: Python imports a package before any of its modules anyway,
    so they are no choice of the importer (and the ``__init__`` files themselves import nothing
    at module level, as a test below checks)."""
    return {m: {t for t in package_imports(m, anywhere=True) if t in MODULES and t not in PACKAGES and t != m}
            for m in MODULES}


# -- the checker itself -----------------------------------------------------------------------------

def test_the_package_is_found() -> None:
    # guards every test below against passing vacuously on an empty directory
    assert {"errors", "config", "queue.jobs", "queue.store", "queue.models", "ctl", "workers.download", "cli",
            "daemon", "library.walker", "control.server"} <= set(MODULES)


def test_the_checker_sees_relative_absolute_and_lazy_imports() -> None:
    tree = ast.parse("from .. import config as c\nfrom .jobs import x\nimport videofetchd.queue.store\n"
                     "from ..workers import child\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..daemon import D\n"
                     "def f():\n    from ..workers.download import y\n")
    eager = {n for node in _collect(tree.body, lazy=False) for n in _resolve(node, "queue.store")}
    assert eager == {"videofetchd.config", "videofetchd.queue.jobs", "videofetchd.queue.store",
                     "videofetchd.workers.child", "typing"}
    everything = {n for node in _collect(tree.body, lazy=True) for n in _resolve(node, "queue.store")}
    assert everything == eager | {"videofetchd.workers.download"}


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


# -- layout ----------------------------------------------------------------------------------------

def test_no_import_cycle_anywhere_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", [m for m in MODULES if m not in PACKAGES])
def test_imports_flow_one_way(module: str) -> None:
    """entry points -> control -> workers | library -> queue -> config/errors/logs."""
    mine = _layer(module)
    for target in package_imports(module, anywhere=True) - PACKAGES:
        assert _layer(target) <= mine, f"{module} (layer {mine}) imports {target} (layer {_layer(target)})"
        if mine == _layer(target) == 2:
            assert module.split(".")[0] == target.split(".")[0], f"{module} imports {target}"


def test_at_most_a_dozen_modules_at_the_top() -> None:
    top = [p.name for p in PKG_DIR.glob("*.py")]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module: str) -> None:
    lines = _path(module).read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}; aim for ~400)"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_package_inits_load_nothing(package: str) -> None:
    # ctl imports __version__ from the package, and every module import runs its package's
    # __init__ first: they must not pull anything in eagerly
    assert package_imports(package) == set()
    assert {n.split(".")[0] for n in imports(package)} <= set(sys.stdlib_module_names) | {"__future__"}


# -- rules of particular modules -------------------------------------------------------------------

@pytest.mark.parametrize("module", ["errors", "text", "control.systemd", "control.protocol", "control.display"])
def test_leaf_modules_import_nothing_from_the_package(module: str) -> None:
    # text (escaping what came from outside before it is printed) is itself a leaf
    assert package_imports(module, anywhere=True) - {"control", "text"} == set()


def test_ctl_module_level_imports_are_light() -> None:
    allowed_pkg = {"control.protocol", "errors", "config", "control.display", "__init__", "control", "text"}
    assert package_imports("ctl") <= allowed_pkg, package_imports("ctl") - allowed_pkg
    stdlib = sys.stdlib_module_names
    third_party = {n for n in imports("ctl") if not n.startswith(PKG) and n.split(".")[0] not in stdlib
                   and n != "__future__"}
    assert third_party == set()


@pytest.mark.parametrize("module", MODULES)
def test_only_download_imports_yt_dlp_at_module_level(module: str) -> None:
    uses = {n for n in imports(module) if n.split(".")[0] == "yt_dlp"}
    if module == "workers.download":
        assert uses, "workers/download.py is the module that wraps yt-dlp"
    else:
        assert uses == set()


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("queue")])
def test_the_database_layer_never_imports_the_runtime(module: str) -> None:
    assert {t.split(".")[0] for t in package_imports(module, anywhere=True)} & \
        {"workers", "library", "control", "daemon", "fetch", "cli", "ctl"} == set()


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("cli", "daemon")])
def test_only_cli_imports_daemon(module: str) -> None:
    assert "daemon" not in package_imports(module, anywhere=True)


def test_cli_does_import_daemon() -> None:
    assert "daemon" in package_imports("cli", anywhere=True)


@pytest.mark.parametrize("module", ["library.walker", "library.walkproc"])
def test_the_walk_never_loads_the_database_layer(module: str) -> None:
    """videofetchctl scan starts walking before it imports peewee and opens the database."""
    assert package_imports(module) & {"queue.store", "library.queries", "queue.models", "library.scan"} == set()
    assert {n.split(".")[0] for n in imports(module)} & {"peewee", "psycopg2", "yt_dlp"} == set()
    loaded = subprocess.run([sys.executable, "-c", f"import sys, videofetchd.{module}; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert "peewee" not in loaded and "videofetchd.queue.store" not in loaded
