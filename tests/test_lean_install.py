"""A daemon host installs ``roomctl`` without aiortc and PyAV; ``join`` says how to get them.

aiortc and PyAV are installed in the test environment (the ``test`` extra pulls in
``media``), so their absence is simulated the way Python sees a missing package: their
entries in ``sys.modules`` are None, which makes every ``import`` of them fail. The
packaging itself is checked in pyproject.toml.
"""

from __future__ import annotations

import json
import pathlib
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
