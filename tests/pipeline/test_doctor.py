"""doctor: every tool and firmware a command may need, with its package, against the real
PATH (narrowed to take tools away) and the real local Glance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgpipe.cli import EXIT_CODES, app
from imgpipe.errors import ToolMissingError
from imgpipe.pipeline.doctor import NEEDS

pytestmark = pytest.mark.slow
runner = CliRunner()


def _doctor(path: str | None = None) -> tuple[int, dict[str, dict]]:
    env = {"PATH": path} if path is not None else {}
    result = runner.invoke(app, ["doctor", "--cloud", "test", "--json"], env=env)
    return result.exit_code, {c["name"]: c for c in json.loads(result.stdout)}


def _only(tools: list[str], bin_dir: Path) -> str:
    """A PATH that holds only these tools (symlinks to the real ones)."""
    bin_dir.mkdir()
    for tool in tools:
        real = shutil.which(tool)
        assert real, f"{tool} must be installed for this test"
        (bin_dir / tool).symlink_to(real)
    return str(bin_dir)


def test_every_need_is_checked_with_its_package_and_use(glance) -> None:
    code, checks = _doctor()
    assert code == 0
    for need in NEEDS:
        check = checks[need.name]
        if need.name != "qemu-img":
            assert need.needed_for in check["detail"]
        if not check["ok"]:
            assert f"apt-get install {need.package}" in check["detail"]
    assert checks["qemu-nbd"]["ok"] and "native streamOptimized writer" in checks["qemu-nbd"]["detail"]
    assert "boot-check" in checks["qemu-system-x86_64"]["detail"]


def test_missing_optional_tools_warn_and_a_missing_required_one_fails(glance, tmp_path: Path) -> None:
    required = [n.name for n in NEEDS if n.required]
    code, checks = _doctor(_only(required, tmp_path / "bin"))
    assert code == 0, checks
    missing = checks["ntfscat"]
    assert not missing["ok"] and missing["optional"]
    assert missing["detail"] == "missing: apt-get install ntfs-3g (for guest inspection (inspect, convert, publish, " \
                                "boot-check): Windows guests)"
    assert not checks["qemu-system-x86_64"]["ok"] and checks["qemu-system-x86_64"]["optional"]
    code, checks = _doctor(_only([t for t in required if t != "qemu-nbd"], tmp_path / "fewer"))
    assert code == EXIT_CODES[ToolMissingError]
    assert checks["qemu-nbd"]["detail"].startswith("missing: apt-get install qemu-utils")
