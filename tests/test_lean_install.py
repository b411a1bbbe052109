"""A daemon host installs ``roomctl`` without aiortc and PyAV; ``join`` says how to get them.

aiortc and PyAV are installed in the test environment (the ``test`` extra pulls in
``media``), so their absence is simulated the way Python sees a missing package: their
entries in ``sys.modules`` are None, which makes every ``import`` of them fail. The
packaging itself is checked in pyproject.toml.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from unittest import mock

from tests.cli_util import one_error_line, run_cli
from tests.conftest import ROOT

WAIT = 15.0
WITHOUT_MEDIA = "import sys; sys.modules['aiortc'] = sys.modules['av'] = None; "


def test_join_without_the_media_extra_says_what_to_install() -> None:
    with mock.patch.dict(sys.modules, {"aiortc": None, "av": None}):
        result = run_cli("join", "ops", "--no-video", "--no-audio")

    assert result.rc == 1
    assert one_error_line(result) == ("roomctl: join needs aiortc and PyAV, which a "
                                      "daemon-only install leaves out: pip install "
                                      "'roomctl[media]'")


def test_the_daemon_and_the_other_commands_run_without_aiortc_and_pyav(
        tmp_path: pathlib.Path) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_MEDIA + "from roomctl.cli import main; main()",
         "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert line.startswith("listening on http://"), serve.stderr.read() if serve.stderr \
            else line
        url = line.split()[-1]
        with urllib.request.urlopen(url + "/healthz", timeout=WAIT) as response:
            assert json.load(response)["status"] == "ok"
        client = subprocess.run(
            [sys.executable, "-c", WITHOUT_MEDIA + "from roomctl.cli import main; main()",
             "room", "create", "ops", "--url", url, "--data-dir", str(tmp_path / "data")],
            capture_output=True, text=True, timeout=WAIT, cwd=ROOT)
        assert client.returncode == 0, client.stderr
    finally:
        serve.terminate()
        assert serve.wait(timeout=WAIT) == 0


def test_the_media_codecs_are_an_extra_that_the_tests_install() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [requirement.split(">")[0].split("[")[0] for requirement in project["dependencies"]]
    assert "aiortc" not in names and "av" not in names
    assert {r.split(">")[0] for r in project["optional-dependencies"]["media"]} == {"aiortc",
                                                                                    "av"}
    assert "roomctl[media]" in project["optional-dependencies"]["test"]


def test_an_installed_wheel_puts_every_man_page_where_man_finds_it(
        tmp_path: pathlib.Path) -> None:
    # A real wheel, built as pip builds one, installed into a real venv (without the
    # dependencies: only the files matter here); man(1) then finds each page through PATH.
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("roomctl-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    pages = sorted(p.name for p in (ROOT / "man").iterdir() if p.suffix in (".1", ".7"))
    assert "roomctl.1" in pages
    for page in pages:
        installed = venv / "share" / "man" / f"man{page[-1]}" / page
        assert installed.read_bytes() == (ROOT / "man" / page).read_bytes(), page
    if shutil.which("man") is None:
        return  # the files are in place; no man(1) here to look them up
    env = {k: v for k, v in os.environ.items() if k != "MANPATH"}  # man's own search
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    for page in pages:
        name, section = page.rsplit(".", 1)
        found = subprocess.run(["man", "-w", section, name], capture_output=True, text=True,
                               env=env, timeout=30)
        assert found.stdout.strip() == str(venv / "share" / "man" / f"man{section}" / page), \
            found.stderr
