"""nova's own vocabulary for the firmware, architecture and vTPM properties, as its enums hold it
(nova/objects/fields.py: Architecture from nova/virt/arch.py, FirmwareType, SecureBoot,
TPMVersion, TPMModel), and the constraints nova enforces between them. A value outside these
makes nova refuse the image (Architecture: "Architecture name 'arm64' is not valid").
"""

from __future__ import annotations

from collections.abc import Mapping

ARCHITECTURES = frozenset({
    "alpha", "armv6", "armv7l", "armv7b", "aarch64", "cris", "i686", "ia64", "lm32", "loongarch64",
    "m68k", "microblaze", "microblazeel", "mips", "mipsel", "mips64", "mips64el", "openrisc", "parisc", "parisc64",
    "ppc", "ppcle", "ppc64", "ppc64le", "ppcemb", "s390", "s390x", "sh4", "sh4eb", "sparc",
    "sparc64", "unicore32", "x86_64", "xtensa", "xtensaeb"})
FIRMWARE_TYPES = frozenset({"uefi", "bios"})
SECURE_BOOT = frozenset({"required", "disabled", "optional"})
TPM_VERSIONS = frozenset({"1.2", "2.0"})
TPM_MODELS = frozenset({"tpm-tis", "tpm-crb"})
ENUMS: dict[str, frozenset[str]] = {"architecture": ARCHITECTURES, "hw_architecture": ARCHITECTURES,
                                    "hw_firmware_type": FIRMWARE_TYPES, "os_secure_boot": SECURE_BOOT,
                                    "hw_tpm_version": TPM_VERSIONS, "hw_tpm_model": TPM_MODELS}
# Targets whose nova driver runs only x86 guests (vSphere has no arm64 guest ids; Hyper-V's and
# XenAPI's drivers only ever ran x86), keyed by hypervisor as derive.hypervisor_of names it.
X86_ONLY = {"vmware": "nova's VMware driver (vSphere has no arm64 guest ids)",
            "hyperv": "nova's Hyper-V driver (x86 hosts only)",
            "xen": "nova's XenAPI driver (x86 hosts only)"}
X86 = frozenset({"x86_64", "i686"})
# nova canonicalises these before checking ARCHITECTURES (Architecture.canonicalize).
ALIASES = {"amd64": "x86_64", "i386": "i686", "i486": "i686", "i586": "i686", "x86_32": "i686"}


def problems(properties: Mapping[str, str]) -> list[str]:
    """Values nova would reject, and combinations it refuses or ignores, one line each."""
    found = []
    for key, allowed in ENUMS.items():
        value = properties.get(key)
        if value is None:
            continue
        shown = ALIASES.get(value.lower(), value.lower()) if "architecture" in key else value
        if shown not in allowed:
            hint = " (nova names it aarch64)" if value.lower() == "arm64" else ""
            found.append(f"{key}={value} is not a value nova accepts ({', '.join(sorted(allowed))}){hint}")
    if properties.get("hw_tpm_model") and "hw_tpm_version" not in properties:
        found.append(f"hw_tpm_model={properties['hw_tpm_model']} without hw_tpm_version: nova adds no TPM")
    if properties.get("hw_tpm_model") == "tpm-crb" and properties.get("hw_tpm_version") == "1.2":
        found.append("hw_tpm_model=tpm-crb needs hw_tpm_version=2.0 (nova: CRB is a TPM 2.0 interface)")
    return found
