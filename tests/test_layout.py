"""The package layout rules that DESIGN.md and STYLE.md state."""

import ast
import pathlib

import daemon
import protocol
import roomctl

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_packages_resolve_inside_this_project() -> None:
    # PyPI's python-daemon also installs a top-level `daemon`; ours must win.
    for package in (daemon, protocol, roomctl):
        assert package.__file__ is not None
        assert pathlib.Path(package.__file__).resolve().parent.parent == ROOT


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


SANS_IO = [*sorted((ROOT / "protocol").glob("*.py")),
           *(ROOT / "daemon" / name for name in ("engine.py", "apps.py", "effects.py", "chat.py"))]


def test_protocol_and_engine_import_no_io_framework() -> None:
    for path in SANS_IO:
        imported = _imports(path)
        assert not imported & {"trio", "asyncio", "trio_websocket", "anyio", "sqlite3"}, path


def test_protocol_imports_only_msgspec_and_stdlib() -> None:
    import sys

    for path in sorted((ROOT / "protocol").glob("*.py")):
        for name in _imports(path):
            allowed = {"msgspec", "protocol", "__future__"} | sys.stdlib_module_names
            assert name in allowed, (path, name)


def test_importing_the_engine_loads_no_io_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, protocol, daemon.engine, daemon.chat, daemon.apps\n"
        "print(sorted(m for m in ('trio', 'asyncio', 'sqlite3', 'trio_websocket')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_engine_and_its_apps_do_not_log() -> None:
    # The sans-IO engine reports what happened as facts among its effects
    # (daemon.effects: RoomCreated, RoomRemoved...); the server logs them.
    for path in SANS_IO:
        imported = _imports(path)
        assert "logging" not in imported, path
        assert "getLogger" not in path.read_text(), path


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
