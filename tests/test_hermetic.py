"""The suite never touches the user's own state, config or home (see conftest.py).

A daemon the user ran with the README's first command leaves its admin token in
``$XDG_STATE_HOME/roomctl``; a ``roomctl`` started by a test must not find it there.
"""

from __future__ import annotations

import json
import subprocess
import sys

from daemon.config import default_data_dir
from roomctl.client import Target
from tests.conftest import HERMETIC_ROOT, ROOT, USER_HOME


def test_the_default_data_dir_is_the_suites_own() -> None:
    data_dir = default_data_dir()
    assert data_dir.is_relative_to(HERMETIC_ROOT)
    assert not data_dir.is_relative_to(USER_HOME) or USER_HOME.is_relative_to(HERMETIC_ROOT)


def test_subprocesses_inherit_a_hermetic_environment() -> None:
    code = ("import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
            "if k.startswith(('HOME', 'XDG_', 'ROOMCTL_'))}))")
    seen = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                     text=True, check=True, cwd=ROOT).stdout)
    for name in ("HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        assert seen[name].startswith(str(HERMETIC_ROOT)), name
    assert [n for n in seen if n.startswith("ROOMCTL_") and not n.startswith("ROOMCTL_TEST_")] \
        == []


def test_a_local_cli_finds_no_admin_token_but_the_suites() -> None:
    # Without --data-dir, the CLI looks in the default data directory: the suite's own.
    token_file = default_data_dir() / "admin-token"
    if token_file.exists():  # a test may have started a daemon on the default directory
        assert Target().resolved_token() == token_file.read_text().strip()
    else:
        assert Target().resolved_token() is None
