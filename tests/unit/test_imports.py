"""One-way imports between videofetchd's modules, checked statically with ``ast``.

The layering keeps ``videofetchctl`` fast (no database driver, no yt-dlp), the pure modules pure,
and the daemon reachable from exactly one entry point. Module-level imports are those executed when
the module is imported: top-level statements, including inside top-level ``try``/``if`` blocks but
not ``if TYPE_CHECKING:``. Imports inside functions (lazy imports) are allowed unless a rule says
"any".
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = "videofetchd"
PKG_DIR = Path(__file__).resolve().parents[2] / PKG
MODULES = sorted(p.stem for p in PKG_DIR.glob("*.py"))
MAX_LINES = 450


def _resolve(node: ast.ImportFrom | ast.Import, module: str) -> list[str]:
    """Absolute dotted names an import statement pulls in (``from . import x`` -> ``videofetchd.x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = PKG  # every module lives directly in the package
        target = f"{base}.{node.module}" if node.module else base
    else:
        target = node.module or ""
    if target == PKG:  # `from . import config` imports the submodule; `from . import __version__` the package
        return [f"{PKG}.{a.name}" if a.name in MODULES else PKG for a in node.names]
    return [target]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            found.append(stmt)
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                found += _module_level(stmt.body)
            found += _module_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody, *[h.body for h in stmt.handlers]):
                found += _module_level(block)
        elif isinstance(stmt, ast.With):
            found += _module_level(stmt.body)
    return found


def imports(module: str, *, anywhere: bool = False) -> set[str]:
    """Dotted names ``module`` imports at module level (or ``anywhere`` in the file)."""
    tree = ast.parse((PKG_DIR / f"{module}.py").read_text(encoding="utf-8"), filename=f"{module}.py")
    if anywhere:
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    else:
        nodes = _module_level(tree.body)
    names: set[str] = set()
    for node in nodes:
        names.update(_resolve(node, module))
    return names


def package_imports(module: str, *, anywhere: bool = False) -> set[str]:
    """Sibling modules imported (``"videofetchd"`` itself shows as ``"__init__"``)."""
    result = set()
    for name in imports(module, anywhere=anywhere):
        if name == PKG:
            result.add("__init__")
        elif name.startswith(PKG + "."):
            result.add(name.split(".")[1])
    return result


def test_the_package_is_found() -> None:
    # guards every test below against passing vacuously on an empty directory
    assert {"errors", "config", "jobs", "store", "models", "ctl", "download", "cli", "daemon"} <= set(MODULES)


def test_the_checker_sees_relative_absolute_and_lazy_imports(tmp_path: Path) -> None:
    tree = ast.parse("from . import config as c\nfrom .jobs import x\nimport videofetchd.store\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .daemon import D\n"
                     "def f():\n    from .download import y\n")
    names = set()
    for node in _module_level(tree.body):
        names.update(_resolve(node, "m"))
    assert names == {"videofetchd.config", "videofetchd.jobs", "videofetchd.store", "typing"}


@pytest.mark.parametrize("module", ["errors", "systemd", "protocol", "display"])
def test_leaf_modules_import_nothing_from_the_package(module: str) -> None:
    assert package_imports(module, anywhere=True) == set()


def test_ctl_module_level_imports_are_light() -> None:
    allowed_pkg = {"protocol", "errors", "config", "display", "__init__"}  # __init__: __version__ only
    assert package_imports("ctl") <= allowed_pkg, package_imports("ctl") - allowed_pkg
    stdlib = sys.stdlib_module_names
    third_party = {n for n in imports("ctl") if not n.startswith(PKG) and n.split(".")[0] not in stdlib
                   and n != "__future__"}
    assert third_party == set()


def test_the_package_init_stays_light() -> None:
    # ctl imports __version__ from the package, so __init__ must not pull anything in eagerly
    assert package_imports("__init__") == set()
    assert {n.split(".")[0] for n in imports("__init__")} <= set(sys.stdlib_module_names) | {"__future__"}


@pytest.mark.parametrize("module", MODULES)
def test_only_download_imports_yt_dlp_at_module_level(module: str) -> None:
    uses = {n for n in imports(module) if n.split(".")[0] == "yt_dlp"}
    if module == "download":
        assert uses, "download.py is the module that wraps yt-dlp"
    else:
        assert uses == set()


@pytest.mark.parametrize("module", ["models", "store"])
def test_the_database_layer_never_imports_the_runtime(module: str) -> None:
    assert package_imports(module, anywhere=True) & {"supervisor", "daemon", "slots", "worker"} == set()


@pytest.mark.parametrize("module", [m for m in MODULES if m not in ("cli", "daemon")])
def test_only_cli_imports_daemon(module: str) -> None:
    assert "daemon" not in package_imports(module, anywhere=True)


def test_cli_does_import_daemon() -> None:
    assert "daemon" in package_imports("cli", anywhere=True)


@pytest.mark.parametrize("module", MODULES)
def test_modules_stay_small(module: str) -> None:
    lines = (PKG_DIR / f"{module}.py").read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module}.py has {lines} lines (at most {MAX_LINES}; aim for ~400)"


@pytest.mark.parametrize("module", ["walker", "walkproc"])
def test_the_walk_never_loads_the_database_layer(module: str) -> None:
    """videofetchctl scan starts walking before it imports peewee and opens the database
    (module-level imports: walker's one TYPE_CHECKING import of scan is for a type only)."""
    assert package_imports(module) & {"store", "library", "models", "scan"} == set()
    assert {n.split(".")[0] for n in imports(module)} & {"peewee", "psycopg2", "yt_dlp"} == set()
    loaded = subprocess.run([sys.executable, "-c", f"import sys, videofetchd.{module}; print(sorted(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout
    assert "peewee" not in loaded and "videofetchd.store" not in loaded
