"""Target profiles: one YAML file per hypervisor target, validated before anything runs.

A mistake in a profile (wrong adapter type, a Glance-reserved key, a descriptor that disagrees
with the property nova reads) otherwise surfaces as a failed boot days later, so every rule
that nova, Glance or vCenter enforce is checked here, with the file and key in the message.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imgpipe.errors import ProfileError
from imgpipe.packages import KINDS, Kind


def _builtin_dir() -> Path:
    """profiles/ beside the package in a checkout (editable install), else the wheel's copy."""
    checkout = Path(__file__).resolve().parent.parent / "profiles"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "imgpipe" / "profiles"


BUILTIN_DIR = _builtin_dir()
# libyaml's safe loader where PyYAML was built with it: every command parses all the profiles,
# and the pure-Python one takes most of that time (about 10x slower on the built-ins).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
ENV_DIRS = "IMGPIPE_PROFILES_DIR"

QemuFormat = Literal["raw", "qcow2", "vmdk", "vpc", "vhdx"]
DiskFormat = Literal["raw", "qcow2", "vmdk", "vhd", "vhdx"]
ContainerFormat = Literal["bare", "ovf", "ova", "docker"]

# Glance's disk_format for each qemu-img output format.
GLANCE_FORMAT: dict[str, str] = {
    "raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vpc": "vhd", "vhdx": "vhdx",
}
# Image attributes and read-only/reserved keys that must not be sent as properties.
RESERVED = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum", "size",
    "virtual_size", "owner", "min_disk", "min_ram", "disk_format", "container_format",
    "created_at", "updated_at", "tags", "file", "schema", "self", "locations", "direct_url",
    "stores", "os_hash_algo", "os_hash_value",
})
RESERVED_PREFIXES = ("os_glance_",)

# nova's accepted values; vmware_adaptertype keeps its documented camelCase.
ALLOWED: dict[str, frozenset[str]] = {
    "vmware_adaptertype": frozenset({"lsiLogic", "busLogic", "lsiLogicsas", "paraVirtual", "ide"}),
    "vmware_disktype": frozenset({"streamOptimized", "sparse"}),
    "hypervisor_type": frozenset({"kvm", "qemu", "lxc", "uml", "vmware", "xen", "hyperv", "baremetal"}),
    "vm_mode": frozenset({"hvm", "xen", "exe", "uml"}),
    "hw_disk_bus": frozenset({"virtio", "scsi", "ide", "usb", "sata", "fdc", "xen", "uml", "lxc"}),
    "hw_firmware_type": frozenset({"bios", "uefi"}),
    "hw_machine_type_hyperv": frozenset({"hyperv-gen1", "hyperv-gen2"}),
    "img_type": frozenset({"whole-disk", "partition"}),
}
WHY_NOT: dict[tuple[str, str], str] = {
    ("hypervisor_type", "ironic"): "nova's ironic driver reports 'baremetal'; use that or leave it unset",
    ("vmware_disktype", "preallocated"): "Glance >= 30 rejects flat/preallocated vmdk uploads",
}
# The descriptor adapter type qemu-img must write for each vmware_adaptertype.
DESCRIPTOR_ADAPTER = {
    "lsiLogic": "lsilogic", "busLogic": "buslogic", "lsiLogicsas": "lsilogic",
    "paraVirtual": "lsilogic", "ide": "ide",
}
VMDK_SUBFORMAT = {"streamOptimized": "streamOptimized", "sparse": "monolithicSparse"}


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class QemuOutput(BaseModel):
    """What `qemu-img convert -O FORMAT -o OPTIONS [-c]` should produce."""

    model_config = ConfigDict(extra="forbid")
    format: QemuFormat
    options: dict[str, str] = Field(default_factory=dict)
    compress: bool = False

    @field_validator("options", mode="before")
    @classmethod
    def _options_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): _as_text(v) for k, v in value.items()}
        return value


class Profile(BaseModel):
    """One target: the disk and container format Glance gets and the properties nova reads."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str
    disk_format: DiskFormat
    container_format: ContainerFormat = "bare"
    output: QemuOutput | None = None
    extract: Literal["root-partition"] | None = None
    package: Literal["xen-ovf-tgz", "vmware-ova", "docker-archive"] | None = None
    properties: dict[str, str] = Field(default_factory=dict)
    warning: str | None = None
    # Upload a source that already is this profile's output as it is (see conversion/passthrough).
    passthrough: bool = True
    # Part of 'all'. Off for a profile that refuses most guests by design (Secure Boot required):
    # 'all' must not turn a publish of an ordinary guest into a refusal.
    in_all: bool = True
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("properties", mode="before")
    @classmethod
    def _properties_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): _as_text(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Profile:
        # Property values first: the cross-checks below look them up in tables.
        for problem in _property_problems(self.properties):
            raise ValueError(problem)
        for problem in _contradictions(self):
            raise ValueError(problem)
        return self

    def output_key(self) -> tuple[Any, ...]:
        """Profiles with equal keys produce byte-identical files, so they share one conversion."""
        if self.output is None:
            return ("passthrough", self.package)
        return (
            self.output.format,
            tuple(sorted(self.output.options.items())),
            self.output.compress,
            self.extract,
            self.passthrough,
            self.package,
        )

    @property
    def kind(self) -> Kind | None:
        """The package kind this profile uploads (None: the converted disk itself)."""
        return KINDS[self.package] if self.package else None

    @property
    def converts(self) -> bool:
        """False for a profile that publishes its source as it is (a docker archive)."""
        return self.kind is None or self.kind.converts

    def advisories(self) -> list[str]:
        notes = [self.warning] if self.warning else []
        if self.properties.get("hypervisor_type") == "vmware" and "os_distro" in self.properties:
            notes.append("os_distro overrides vmware_ostype as the vCenter guestId; "
                         "vCenter rejects values like 'ubuntu'")
        return notes


def _property_problems(props: dict[str, str]) -> Iterable[str]:
    for key, value in props.items():
        where = f"properties.{key}"
        if key in RESERVED or key.startswith(RESERVED_PREFIXES):
            yield f"{where}: reserved by Glance, cannot be set as a property"
        rule = "hw_machine_type_hyperv" if key == "hw_machine_type" and value.startswith("hyperv") else key
        if (key, value) in WHY_NOT:
            yield f"{where}: {value}: {WHY_NOT[(key, value)]}"
        allowed = ALLOWED.get(rule)
        if allowed is not None and value not in allowed:
            yield f"{where}: {value!r} is not one of {', '.join(sorted(allowed))}"


def _contradictions(p: Profile) -> Iterable[str]:
    props = p.properties
    kind = p.kind
    if kind is not None and not kind.converts:
        if p.container_format != kind.container_format or p.output is not None:
            yield f"package: {kind.name} needs container_format {kind.container_format} and no output section"
        return
    if p.output is None:
        yield "output: required (qemu-img output format and options)"
        return
    if GLANCE_FORMAT[p.output.format] != p.disk_format:
        yield (f"disk_format: {p.disk_format} disagrees with output.format {p.output.format} "
               "(Glance would refuse the upload)")
    if kind is not None and ((p.disk_format, p.container_format) != (kind.disk_format, kind.container_format)
                             or (kind.subformat and p.output.options.get("subformat") != kind.subformat)):
        yield (f"package: {kind.name} needs disk_format {kind.disk_format}, container_format "
               f"{kind.container_format}" + (f" and a {kind.subformat} vmdk" if kind.subformat else ""))
    owner = next((k for k in KINDS.values() if k.container_format == p.container_format), None)
    if owner is not None and kind is not owner:
        what = "for" if not owner.converts else "produced by"
        yield f"container_format: {p.container_format} is only {what} package: {owner.name}"
    if p.extract and p.output.format != "raw" and p.output.format != "qcow2":
        yield "extract: a root-partition filesystem image must be raw or qcow2"
    opts = p.output.options
    if p.output.format == "vmdk":
        yield from _vmdk_contradictions(opts, props)
    if p.output.format == "vpc" and (opts.get("subformat") != "dynamic" or opts.get("force_size") != "on"):
        yield ("output.options: vhd must be subformat=dynamic,force_size=on "
               "(Glance detects a fixed vhd as raw and rejects it)")
    if props.get("hw_machine_type") == "hyperv-gen2" and p.disk_format != "vhdx":
        yield "properties.hw_machine_type: hyperv-gen2 needs disk_format vhdx (Hyper-V refuses Gen2 with vhd)"


def _vmdk_contradictions(opts: dict[str, str], props: dict[str, str]) -> Iterable[str]:
    adapter = opts.get("adapter_type")
    if adapter is None:
        yield ("output.options.adapter_type: required for vmdk "
               "(qemu-img defaults to ide, which must match vmware_adaptertype)")
    wanted = props.get("vmware_adaptertype")
    if adapter and wanted and DESCRIPTOR_ADAPTER[wanted] != adapter:
        yield (f"output.options.adapter_type: {adapter} disagrees with properties.vmware_adaptertype "
               f"{wanted} (descriptor must be {DESCRIPTOR_ADAPTER[wanted]})")
    subformat = opts.get("subformat", "monolithicSparse")
    if subformat not in VMDK_SUBFORMAT.values():
        yield (f"output.options.subformat: {subformat} is not accepted by Glance "
               "(use streamOptimized or monolithicSparse)")
    disktype = props.get("vmware_disktype")
    if disktype and VMDK_SUBFORMAT[disktype] != subformat:
        yield f"properties.vmware_disktype: {disktype} disagrees with output.options.subformat {subformat}"


def load_file(path: Path) -> Profile:
    """Load and validate one profile file; the file stem is the profile name."""
    try:
        data = yaml.load(path.read_text(), Loader=_YAML_LOADER)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile keys")
    data.setdefault("name", path.stem)
    if data["name"] != path.stem:
        raise ProfileError(f"{path}: name: {data['name']!r} must equal the file name {path.stem!r}")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: {describe_validation_error(exc)}") from exc
    return profile.model_copy(update={"source": path})


def describe_validation_error(exc: ValidationError) -> str:
    """One line for the first problem: 'key.path: message (+N more)'."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}" if loc else f"{msg}{more}"


def search_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    """Built-ins first, then $IMGPIPE_PROFILES_DIR, then --profiles-dir: later ones override."""
    env = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    return [BUILTIN_DIR, *env, *extra]


def load_all(extra_dirs: Iterable[Path] = ()) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for directory in search_dirs(extra_dirs):
        if directory != BUILTIN_DIR and not directory.is_dir():
            raise ProfileError(f"{directory}: profiles directory does not exist")
        for path in sorted(directory.glob("*.yaml")):
            profiles[path.stem] = load_file(path)
    return profiles


def select(names: Iterable[str], available: dict[str, Profile]) -> list[Profile]:
    """Resolve requested names in order, without repeats.

    'all' means every disk-image profile (docker takes a different kind of source) but those
    named alone (in_all: false).
    """
    disk_images = sorted(n for n, p in available.items() if p.converts and p.in_all)
    wanted: list[str] = []
    for name in names:
        for one in (disk_images if name == "all" else [name]):
            if one not in available:
                raise ProfileError(f"unknown profile {one!r}: known are {', '.join(sorted(available))}")
            if one not in wanted:
                wanted.append(one)
    return [available[n] for n in wanted]
