"""When the source already is what a profile uploads, the best conversion is none.

A qcow2 cloud image is usually exactly what kvm, qemu and ironic hosts read: converting it
costs a second and turns 84 MiB of compressed clusters into 194 MiB to upload. Only features
every reader of the target format understands pass (qemu 2.x era qcow2: compat 1.1, zlib);
anything newer or stateful (zstd, extended L2, bitmaps, encryption, external data) is
converted as before. The source was already verified by inspection (format_inspector safety
checks, `qemu-img info` and `check`), so the copy is that verified file, byte for byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgpipe import qemu
from imgpipe.profiles import Profile
from imgpipe.runner import run
from imgpipe.source.inspect import ImageInfo

# Output options a plain qcow2 source satisfies as it is.
QCOW2_SATISFIES = {"compat": "1.1"}
QCOW2_COMPRESSION = {None, "zlib"}


def applies(info: ImageInfo, profile: Profile, window: qemu.Source) -> bool:
    """Whether the whole source, unchanged, is the file this profile would produce."""
    out = profile.output
    if not profile.passthrough or out is None or profile.package or window.offset is not None:
        return False
    if info.format != out.format or out.compress:
        return False
    if out.format == "raw":
        return not out.options
    if out.format == "qcow2":
        return (all(QCOW2_SATISFIES.get(k) == v for k, v in out.options.items())
                and plain_qcow2(info.format_specific))
    return False


def plain_qcow2(data: dict[str, Any]) -> bool:
    """qemu-img info's qcow2 format-specific data shows nothing an older reader would miss."""
    return (data.get("compat") == "1.1"
            and data.get("compression-type") in QCOW2_COMPRESSION
            and not data.get("extended-l2")
            and not data.get("bitmaps")
            and not data.get("encrypt")
            and not data.get("data-file")
            and not data.get("corrupt"))


def copy(src: Path, dest: Path) -> None:
    """A reflink where the filesystem can (instant, no space), else a sparse copy."""
    run(["cp", "--reflink=auto", "--sparse=auto", str(src), str(dest)])
