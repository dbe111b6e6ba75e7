"""The imgpipe command run in-process, as the tests that drive the CLI call it."""
from __future__ import annotations

from typer.testing import CliRunner

from imgpipe.cli import app

runner = CliRunner()


def imgpipe(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr
