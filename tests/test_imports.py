"""Start-up: the CLI does not pay for package __init__s it never uses, and other users of
those packages still get all of them (fresh interpreters, so nothing is imported yet)."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_the_cli_skips_openstack_connection_and_oslo_strutils() -> None:
    out = _python("import sys, imgpipe.cli\n"
                  "print(sorted(m for m in ('openstack.connection', 'oslo_utils.strutils',"
                  " 'oslo_utils.imageutils.qemu') if m in sys.modules))")
    assert out.strip() == "[]"


def test_deferred_packages_complete_on_first_use() -> None:
    out = _python("import imgpipe, openstack, oslo_utils.imageutils as iu\n"
                  "from openstack import config\n"
                  "print(callable(openstack.connect), iu.QemuImgInfo.__name__, config.__name__)")
    assert out.split() == ["True", "QemuImgInfo", "openstack.config"]
