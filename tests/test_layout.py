"""The architecture as tests: the layering contracts in pyproject.toml, checked by import-linter.

import-linter follows indirect imports too (a module of the core reaching ``jwt`` through
another module breaks the contract as surely as ``import jwt`` would). The contracts:
``protocol`` is pure data; ``daemon.core`` and ``daemon.apps`` do no I/O; the daemon's
layers run server > net | store | tokens > config > apps > core; the daemon never imports
the CLI.
"""

import ast
import os
import pathlib
import shutil
import subprocess
import sys

import daemon
import protocol
import roomctl

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINT_IMPORTS = pathlib.Path(sys.executable).with_name("lint-imports")


def _lint_imports(tree: pathlib.Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH puts ``tree``'s packages ahead of the editable install's finder.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def test_packages_resolve_inside_this_project() -> None:
    # PyPI's python-daemon also installs a top-level `daemon`; ours must win.
    for package in (daemon, protocol, roomctl):
        assert package.__file__ is not None
        assert pathlib.Path(package.__file__).resolve().parent.parent == ROOT


def test_the_import_contracts_hold() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_an_indirect_io_import_into_the_core_breaks_a_contract(tmp_path: pathlib.Path) -> None:
    # The contracts can fail: a copy of the tree whose core reaches trio through a helper
    # module (an indirect import, which the old AST check missed) is refused.
    for name in ("protocol", "daemon", "roomctl"):
        shutil.copytree(ROOT / name, tmp_path / name,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "daemon" / "core" / "clock.py").write_text("import trio\n")
    with (tmp_path / "daemon" / "core" / "effects.py").open("a") as f:
        f.write("from daemon.core import clock  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "daemon.core.effects -> daemon.core.clock" in result.stdout
    assert "not allowed to import trio" in result.stdout


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_protocol_imports_only_msgspec_and_stdlib() -> None:
    for path in sorted((ROOT / "protocol").glob("*.py")):
        for name in _imports(path):
            allowed = {"msgspec", "protocol", "__future__"} | sys.stdlib_module_names
            assert name in allowed, (path, name)


def test_importing_the_engine_loads_no_io_framework() -> None:
    code = (
        "import sys, protocol, daemon.core.engine, daemon.apps\n"
        "print(sorted(m for m in ('trio', 'asyncio', 'sqlite3', 'trio_websocket', 'jwt')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readmes_name_only_files_a_reader_of_the_repository_has() -> None:
    # The README once pointed at ../shared/bench, which only the development machines have.
    import re

    for readme in (ROOT / "README.md", ROOT / "tests" / "bench" / "README.md"):
        text = readme.read_text()
        assert "../" not in text, readme
        named = re.findall(r"`((?:daemon|protocol|roomctl|man|tests)/[\w./-]+)`", text)
        assert named or readme.name == "README.md", readme
        for path in named:
            assert (ROOT / path).exists(), (readme, path)
