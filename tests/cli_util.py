"""Running the real ``roomctl`` entry point inside the test process.

Parsing, usage errors, help and exit codes need no daemon and no second process: the
same ``roomctl.cli.main`` a shell runs is called here, with stdin, stdout, stderr and the
environment swapped by Typer's ``CliRunner.isolation`` (which also renders help at 80
columns, as in a pipe). Tests of signals, pipes, restarts and real I/O keep running the
command as a subprocess (``tests/test_cli.py``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any
from unittest import mock

from typer.testing import CliRunner

from roomctl import cli

# Nothing listens here (port 9 is "discard", closed on these machines): a command that
# got as far as connecting would exit 5, so exit 2 proves it stopped at its arguments.
NOWHERE = "http://127.0.0.1:9"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


def run_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Result:
    """Run ``roomctl ARGS`` in this process; return its exit status, stdout and stderr."""
    runner = CliRunner()
    rc = 0
    with runner.isolation(input=input, env={"ROOMCTL_URL": NOWHERE, **(env or {})}) \
            as (out, err, _), mock.patch.object(sys, "argv", ["roomctl", *args]):
        try:
            cli.main()
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        sys.stderr.flush()
        result = Result(rc, out.getvalue().decode(), err.getvalue().decode())
    return result


def one_error_line(result: Result) -> str:
    """Assert stderr is exactly one ``roomctl:`` line with no traceback; return it."""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("roomctl: "), result.err
    assert "Traceback" not in result.err
    return lines[0]
