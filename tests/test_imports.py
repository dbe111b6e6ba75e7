"""Start-up: the CLI imports what a command needs inside that command, and rewrites nothing in
sys.modules (fresh interpreters, so nothing is imported yet)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout


def test_the_cli_imports_only_what_parsing_arguments_needs() -> None:
    """No cloud client, no guest readers' libraries, no pipeline: each command imports its own."""
    out = _python("import sys, imgpipe.cli\n"
                  "print(sorted(m for m in ('openstack', 'keystoneauth1', 'oslo_utils.strutils',"
                  " 'oslo_utils.imageutils', 'regipy', 'pycdlib', 'zstandard', 'imgpipe.pipeline.prepared',"
                  " 'imgpipe.conversion.convert', 'rich', 'cryptography') if m in sys.modules))")
    assert out.strip() == "[]"


def test_help_loads_no_rich() -> None:
    """Help is click's plain text: rich comes only with a table or a bar."""
    proc = subprocess.run([sys.executable, "-c", "import atexit, sys\n"
                           "atexit.register(lambda: print(sorted(m for m in ('rich',) if m in sys.modules),"
                           " file=sys.stderr))\n"
                           "from imgpipe.cli import app\napp()", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "convert" in proc.stdout
    assert proc.stderr.strip() == "[]"


def test_importing_imgpipe_leaves_other_packages_alone() -> None:
    """A library user's openstack and oslo_utils are the real, fully initialised packages."""
    out = _python("import imgpipe.cli, openstack, oslo_utils.imageutils as iu\n"
                  "print(callable(openstack.connect), iu.QemuImgInfo.__name__, type(openstack).__name__)")
    assert out.split() == ["True", "QemuImgInfo", "module"]


# What a kvm convert of a plain qcow2 has no use for: the cloud clients (upload), signing and
# certificate parsing (an unsigned loader; format_inspector's LUKS reader does import cryptography's
# ciphers), rich (nothing is printed for people under --json), the writers of other outputs.
NOT_ON_CONVERT = ("openstack", "keystoneauth1", "glanceclient", "requests", "cursive", "cryptography.x509",
                  "rich", "isal", "imgpipe.cloud.glance", "imgpipe.cloud.upload", "imgpipe.signing",
                  "imgpipe.conversion.vmdk_stream", "imgpipe.boot.machine", "imgpipe.catalog",
                  "imgpipe.cli.inspect_view")


def test_a_kvm_convert_loads_only_what_it_uses(sample_qcow2: Path, tmp_path: Path) -> None:
    """The whole command, run for real (the copy made, the guest read): what it imported by the end."""
    seen = tmp_path / "modules.json"
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: open({str(seen)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
            "from imgpipe.cli import app\n"
            "app()\n")
    proc = subprocess.run([sys.executable, "-c", code, "convert", str(sample_qcow2), "-p", "kvm",
                           "--output-dir", str(tmp_path), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (output,) = json.loads(proc.stdout)
    assert output["engine"] == "passthrough"
    modules = set(json.loads(seen.read_text()))
    assert "imgpipe.guest.inspect" in modules  # the guest was read: the check below is not vacuous
    assert sorted(m for m in modules if m.startswith(NOT_ON_CONVERT)) == []
