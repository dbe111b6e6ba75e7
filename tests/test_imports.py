"""Start-up: the CLI imports what a command needs inside that command, and rewrites nothing in
sys.modules (fresh interpreters, so nothing is imported yet)."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_the_cli_imports_only_what_parsing_arguments_needs() -> None:
    """No cloud client, no guest readers' libraries, no pipeline: each command imports its own."""
    out = _python("import sys, imgpipe.cli\n"
                  "print(sorted(m for m in ('openstack', 'keystoneauth1', 'oslo_utils.strutils',"
                  " 'oslo_utils.imageutils', 'regipy', 'pycdlib', 'zstandard', 'imgpipe.pipeline.prepared',"
                  " 'imgpipe.conversion.convert') if m in sys.modules))")
    assert out.strip() == "[]"


def test_importing_imgpipe_leaves_other_packages_alone() -> None:
    """A library user's openstack and oslo_utils are the real, fully initialised packages."""
    out = _python("import imgpipe.cli, openstack, oslo_utils.imageutils as iu\n"
                  "print(callable(openstack.connect), iu.QemuImgInfo.__name__, type(openstack).__name__)")
    assert out.split() == ["True", "QemuImgInfo", "module"]
