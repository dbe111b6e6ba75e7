"""The command line: bad inputs give one clear line, a distinct exit code, and no output."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_invoke import imgpipe
from conftest import qemu_img
from typer.testing import CliRunner

from imgpipe.cli import EXIT_CODES, app
from imgpipe import errors

runner = CliRunner()


def test_exit_codes_are_distinct() -> None:
    """2 is click's usage error; a bad IMGPIPE_* setting is the one ImgpipeError that is a usage error too."""
    codes = [code for cls, code in EXIT_CODES.items() if cls is not errors.SettingError]
    assert len(codes) == len(set(codes)) and not {0, 1, 2} & set(codes)
    assert EXIT_CODES[errors.SettingError] == 2


def _text(tmp: Path, sample: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not a disk\n")
    return path


def _gzip(tmp: Path, sample: Path) -> Path:
    path = tmp / "disk.qcow2.gz"
    path.write_bytes(gzip.compress(sample.read_bytes()[:65536]))
    return path


def _backing(tmp: Path, sample: Path) -> Path:
    path = tmp / "child.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", str(sample), "-F", "qcow2", str(path))
    return path


def _data_file(tmp: Path, sample: Path) -> Path:
    path = tmp / "external.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp / 'data.raw'}", str(path), "16M")
    return path


def _flat_vmdk(tmp: Path, sample: Path) -> Path:
    path = tmp / "flat.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(path), "16M")
    return path


def _truncated(tmp: Path, sample: Path) -> Path:
    path = tmp / "cut.qcow2"
    path.write_bytes(sample.read_bytes()[: sample.stat().st_size // 3])
    return path


def _missing(tmp: Path, sample: Path) -> Path:
    return tmp / "nope.qcow2"


BAD: list[tuple[Callable[[Path, Path], Path], type[errors.ImgpipeError], str, list[str]]] = [
    (_missing, errors.SourceError, "no such file", []),
    (_text, errors.UnsafeImageError, "not a disk image", []),
    (_gzip, errors.UnsafeImageError, "truncated or corrupt qcow2", []),  # decompressed, then inspected
    (_backing, errors.UnsafeImageError, "backing file", []),
    (_data_file, errors.UnsafeImageError, "unsafe qcow2: Image has data_file set", []),
    (_flat_vmdk, errors.UnsafeImageError, "unsafe vmdk: Unsupported subformat", []),
    (_truncated, errors.UnsafeImageError, "truncated or corrupt qcow2", []),
    (lambda t, s: s, errors.FormatMismatchError, "claimed format vmdk but the content is qcow2",
     ["--source-format", "vmdk"]),
    (lambda t, s: s, errors.ImageTooLargeError, "exceeds the limit", ["--max-virtual-size", "64M"]),
]


@pytest.mark.parametrize(("make", "kind", "message", "extra"), BAD,
                         ids=[b[0].__name__.strip("_") if b[0].__name__ != "<lambda>" else b[1].__name__ for b in BAD])
def test_bad_input(sample_qcow2: Path, tmp_path: Path, make: Callable[[Path, Path], Path],
                   kind: type[errors.ImgpipeError], message: str, extra: list[str]) -> None:
    src = make(tmp_path, sample_qcow2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, stdout, stderr = imgpipe("convert", src, "-p", "kvm", "-p", "vmware", "--output-dir", out_dir, *extra)
    assert code == EXIT_CODES[kind], stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"imgpipe: error: {src}: ")
    assert message in lines[0]
    assert list(out_dir.iterdir()) == []


def test_no_space_detected_before_converting(sample_qcow2: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)]).returncode == 0
    if not mounted:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        code, _, stderr = imgpipe("convert", sample_qcow2, "-p", "lxc", "--output-dir", small)
        assert code == EXIT_CODES[errors.NoSpaceError], stderr
        assert f"{small}: needs about" in stderr
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_bad_profile_file_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("description: x\ndisk_format: vmdk\noutput: {format: vmdk}\n")
    code, _, stderr = imgpipe("profiles", "validate", bad)
    assert code == EXIT_CODES[errors.ProfileError]
    assert stderr.startswith(f"imgpipe: error: {bad}: output.options.adapter_type: required")


def test_inspect_json(sample_qcow2: Path) -> None:
    code, stdout, _ = imgpipe("inspect", sample_qcow2, "--json")
    assert code == 0
    data = json.loads(stdout)
    assert data["format"] == "qcow2" and data["safe"] and data["table"] == "gpt"
    assert [p["kind"] for p in data["partitions"]] == ["efi", "bios-boot", "linux"]


def test_convert_json_and_error_json(sample_qcow2: Path, tmp_path: Path) -> None:
    code, stdout, _ = imgpipe("convert", sample_qcow2, "-p", "kvm", "-p", "qemu", "--output-dir", tmp_path,
                              "--verify", "--json")
    assert code == 0
    [out] = json.loads(stdout)
    assert out["profiles"] == ["kvm", "qemu"] and out["verified"] is True
    code, stdout, _ = imgpipe("convert", tmp_path / "missing", "-p", "kvm", "--json")
    assert json.loads(stdout)["exit_code"] == code == EXIT_CODES[errors.SourceError]


def test_profiles_list_and_show() -> None:
    code, stdout, _ = imgpipe("profiles", "list", "--json")
    assert code == 0 and {"vmware", "docker"} <= {p["name"] for p in json.loads(stdout)}
    code, stdout, _ = imgpipe("profiles", "show", "xen", "--json")
    assert json.loads(stdout)["container_format"] == "ovf"


def test_profile_property_must_name_a_selected_profile(sample_qcow2: Path) -> None:
    result = runner.invoke(app, ["publish", str(sample_qcow2), "-p", "kvm", "--name", "x",
                                 "--profile-property", "vmware:vmware_ostype=ubuntu64Guest"])
    assert result.exit_code == 2
    assert "expected PROFILE:key=value for a profile given with -p" in result.stderr


def _command_paths() -> list[list[str]]:
    """Every command and group, as a user types it (imgpipe, imgpipe catalog, imgpipe catalog sync...)."""
    import typer

    def walk(command: object, path: list[str]) -> list[list[str]]:
        found = [path]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, [*path, name])
        return found

    return walk(typer.main.get_command(app), [])


# What a help page must never show: Python type names, typer's placeholders, raw byte sizes.
INTERNAL = re.compile(r"<(bool|str|int|float|path|text|integer)\b|list\[|range>|1099511627776")


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "imgpipe")
def test_every_help_page_reads_like_a_cli(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.stdout
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: ") and "{" not in usage, text  # SRC, not {src}
    assert not INTERNAL.search(text), text
    # no word cut at a hyphen or inside a choice list by wrapping
    assert not re.search(r"[\w|]-?\n\s+[\w|]+[|>]", text) and not re.search(r"\w-\n\s+\w", text), text
    for choices in re.findall(r"<[\w|-]+>", text):
        assert text.count(choices) == 1, f"{choices} listed more than once"


def test_sizes_are_accepted_and_shown_as_people_write_them(sample_qcow2: Path) -> None:
    result = runner.invoke(app, ["inspect", "--help"], env={"COLUMNS": "80"})
    assert "[default: 1T]" in result.stdout
    code, _, stderr = imgpipe("inspect", sample_qcow2, "--max-virtual-size", "64M")
    assert code == EXIT_CODES[errors.ImageTooLargeError]
    assert "virtual size 128.0 MiB exceeds the limit of 64.0 MiB" in stderr
    code, _, _ = imgpipe("inspect", sample_qcow2, "--max-virtual-size", "1T")
    assert code == 0
    code, _, stderr = imgpipe("inspect", sample_qcow2, "--max-virtual-size", "lots")
    assert code == 2 and "'lots' is not a size like 512M, 20G or 1T" in stderr


def test_inspect_text_shows_what_all_profiles_share_once(sample_qcow2: Path) -> None:
    code, stdout, _ = imgpipe("inspect", sample_qcow2)
    assert code == 0
    lines = stdout.splitlines()
    assert len(lines) < 25, stdout
    everyone = next(line for line in lines if "architecture=x86_64" in line)
    assert re.search(r"all \d+ profiles", everyone)
    assert sum("architecture=" in line for line in lines) == 1
    assert any("hw_qemu_guest_agent=yes" in line and "kvm, kvm-raw, kvm-secureboot, qemu" in line for line in lines)
    assert "debian" in stdout and "uefi" in stdout  # the guest facts
    code, stdout, _ = imgpipe("inspect", sample_qcow2, "-p", "kvm", "-p", "vmware")
    derived = stdout[stdout.index("derived properties"):]
    assert "hyperv" not in stdout and "kvm" in derived and "vmware" in derived
    assert re.search(r"^  vmware_ostype=debian12_64Guest +vmware$", derived, flags=re.M), derived
    code, stdout, _ = imgpipe("inspect", sample_qcow2, "-p", "kvm", "--evidence")
    assert re.search(r"^  architecture +x86_64 \(from partition 1 \(ESP\) EFI/BOOT/BOOTX64\.EFI", stdout, flags=re.M)
    assert re.search(r"^  os_distro=debian +kvm +from partition 3 /etc/os-release", stdout, flags=re.M), stdout


def test_inspect_json_narrowed_by_profile(sample_qcow2: Path) -> None:
    code, stdout, _ = imgpipe("inspect", sample_qcow2, "--json", "-p", "kvm", "-p", "vmware")
    assert code == 0
    data = json.loads(stdout)
    assert set(data["derived_properties"]) == {"kvm", "vmware"}
    assert data["derived_properties"]["kvm"]["architecture"]["evidence"]


def test_arguments_are_checked_before_any_work(tmp_path: Path) -> None:
    """A missing --output-dir is a usage error even for a source that does not exist: nothing was read."""
    code, _, stderr = imgpipe("convert", tmp_path / "nope.qcow2", "-p", "kvm", "--output-dir", tmp_path / "missing")
    assert code == 2 and "--output-dir" in stderr and "does not exist" in stderr
    code, _, stderr = imgpipe("convert", tmp_path / "nope.qcow2", "-p", "kvm", "-p", "vmware", "-o", tmp_path / "x")
    assert code == EXIT_CODES[errors.ProfileError] and "-o takes one output" in stderr
    code, _, stderr = imgpipe("publish", tmp_path / "nope.qcow2", "-p", "kvm", "--name", "x", "--work-dir",
                              tmp_path / "missing")
    assert code == 2 and "--work-dir" in stderr
    code, _, stderr = imgpipe("publish", tmp_path / "nope.qcow2", "-p", "kvm", "--name", "x", "--jobs", "0")
    assert code == 2 and "--jobs" in stderr
    assert list(tmp_path.iterdir()) == []


def test_piped_convert_prints_progress_lines(sample_qcow2: Path, tmp_path: Path) -> None:
    """No terminal (a CI log): lines with percent, rate and ETA while qemu-img writes, then done."""
    env = {**os.environ, "IMGPIPE_PROGRESS_INTERVAL": "0", "COLUMNS": "100"}
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "convert", str(sample_qcow2), "-p", "kvm-raw",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "guest.raw: started (128.0 MiB)" in lines
    steps = [line for line in lines if re.fullmatch(r"guest\.raw: \d+% of 128\.0 MiB, [\d.]+ MB/s, ETA \d+:\d\d", line)]
    assert steps, proc.stderr
    assert re.fullmatch(r"guest\.raw: done, 128\.0 MiB in \d+:\d\d(, [\d.]+ MB/s)?", lines[-1]), proc.stderr


def test_warnings_carry_no_logger_name(sample_qcow2: Path, tmp_path: Path) -> None:
    """The sample has no cloud-init: the guest check warns, as imgpipe's own messages read."""
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "convert", str(sample_qcow2), "-p", "kvm",
                           "--output-dir", str(tmp_path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "no cloud-init in the guest" in line]
    assert warned and all(line.startswith("warning: guest.qcow2: profile kvm: ") for line in warned), proc.stderr
    assert "imgpipe." not in proc.stderr


def test_publish_takes_the_source_and_conversion_options_convert_has() -> None:
    text = runner.invoke(app, ["publish", "--help"], env={"COLUMNS": "80"}).stdout
    for option in ("--source-format FORMAT", "--max-virtual-size SIZE", "--partition N", "--jobs N"):
        assert option in text


@pytest.mark.slow
def test_piped_publish_prints_upload_progress(glance, sample_qcow2: Path) -> None:
    env = {**os.environ, "IMGPIPE_PROGRESS_INTERVAL": "0"}
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "publish", str(sample_qcow2), "-p", "kvm",
                           "--name", "piped", "--cloud", "test", "--force"],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    size = r"\d+\.\d MiB"
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(rf"upload test/piped-kvm: \d+% of {size}, [\d.]+ MB/s, ETA \d+:\d\d", line)
               for line in lines), proc.stderr
    assert any(re.fullmatch(rf"upload test/piped-kvm: done, {size} in \d+:\d\d(, [\d.]+ MB/s)?", line)
               for line in lines), proc.stderr


@pytest.mark.slow
def test_publish_refuses_by_the_source_options_before_uploading(glance, sample_qcow2: Path) -> None:
    from imgpipe.cloud import clouds

    code, _, stderr = imgpipe("publish", sample_qcow2, "-p", "kvm", "--name", "toolarge", "--cloud", "test",
                              "--max-virtual-size", "64M")
    assert code == EXIT_CODES[errors.ImageTooLargeError], stderr
    code, _, stderr = imgpipe("publish", sample_qcow2, "-p", "kvm", "--name", "toolarge", "--cloud", "test",
                              "--source-format", "vmdk")
    assert code == EXIT_CODES[errors.FormatMismatchError], stderr
    listed = clouds.connect("test").image.get("/v2/images?name=toolarge-kvm").json()["images"]
    assert listed == []


@pytest.mark.parametrize(("columns", "width"), [("90", 90), (None, 120)])
def test_piped_output_width(columns: str | None, width: int) -> None:
    """$COLUMNS when set, else 120: not the old fixed 200 columns."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | ({"COLUMNS": columns} if columns else {})
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "profiles", "list"], capture_output=True,
                          text=True, env=env, check=True)
    assert max(len(line) for line in proc.stdout.splitlines()) == width


def test_a_directory_as_output_file_is_refused_before_converting(sample_qcow2: Path, tmp_path: Path) -> None:
    """On the command line a usage error (2); through the pipeline, OutputPathError before any work."""
    from imgpipe.conversion.convert import Options
    from imgpipe.pipeline.convert import convert_source
    from imgpipe.profiles import load_all, select

    target = tmp_path / "existing"
    target.mkdir()
    code, _, stderr = imgpipe("convert", sample_qcow2, "-p", "kvm", "-o", target)
    assert code == 2 and "is a directory" in stderr, stderr
    with pytest.raises(errors.OutputPathError, match=f"^{target}: is a directory; -o names the output file"):
        convert_source(sample_qcow2, select(["kvm"], load_all()), Options(out_file=target))
    assert EXIT_CODES[errors.OutputPathError] == 26
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_an_os_error_is_one_line_and_its_own_exit_code(sample_qcow2: Path, tmp_path: Path) -> None:
    """No OSError ends in a traceback: the output's name is taken by a directory, which only the
    final rename meets (IsADirectoryError); nothing half-written is left beside it."""
    out_dir = tmp_path / "out"
    (out_dir / "guest.qcow2").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "imgpipe.cli", "convert", str(sample_qcow2), "-p", "kvm",
                           "--output-dir", str(out_dir)], capture_output=True, text=True)
    assert proc.returncode == EXIT_CODES[errors.LocalIOError] == 27, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and last.startswith("imgpipe: error: ") and "Is a directory" in last
    assert [p.name for p in out_dir.iterdir()] == ["guest.qcow2"] and not any((out_dir / "guest.qcow2").iterdir())


def test_os_errors_map_to_documented_codes() -> None:
    import errno

    from imgpipe.cli.base import from_os_error

    full = from_os_error(OSError(errno.ENOSPC, "No space left on device", "/out/x.qcow2"))
    assert isinstance(full, errors.NoSpaceError) and str(full) == "/out/x.qcow2: No space left on device"
    denied = from_os_error(PermissionError(errno.EACCES, "Permission denied", "/etc/shadow"))
    assert isinstance(denied, errors.LocalIOError) and EXIT_CODES[errors.LocalIOError] == 27
    assert str(denied) == "/etc/shadow: Permission denied"
