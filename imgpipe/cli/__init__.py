"""The imgpipe command line: parse, call one function, render. Exit codes live in base.py only."""

from imgpipe.cli import images, boot, cloud, sign, catalog  # noqa: F401,I001  (registers the commands, in --help order)
from imgpipe.cli.base import EXIT_CODES, EXIT_INTERRUPTED, EXIT_TERMINATED, app, exit_code

__all__ = ["EXIT_CODES", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "app", "exit_code"]
