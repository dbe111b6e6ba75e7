"""Whether cloud-init (cloudbase-init) in the guest reaches a target's metadata, from what
guest.cloudinit and guest.windows read.

A guest whose datasource_list asks neither OpenStack nor ConfigDrive boots on OpenStack without
its SSH key, and nothing in the image upload says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgpipe.guest.facts import CloudInit, Fact

METADATA_SERVICE = "metadata-service"
CONFIG_DRIVE = "config-drive"
_BOTH = frozenset({METADATA_SERVICE, CONFIG_DRIVE})
# How a guest on each nova hypervisor_type can get its metadata. libvirt-lxc: nova builds the
# config drive ISO but attaches it only to non-LXC domains (_get_guest_storage_config), and sets
# product_name=OpenStack Nova in the container's init environment, which cloud-init's OpenStack
# datasource detects; so a container has the metadata service only.
METADATA_PATHS: dict[str, frozenset[str]] = {
    "kvm": _BOTH,
    "qemu": _BOTH,
    "ironic": _BOTH,
    "hyperv": _BOTH,
    "vmware": _BOTH,
    "lxc": frozenset({METADATA_SERVICE}),
}
CLOUD_INIT_PATHS = {"OpenStack": METADATA_SERVICE, "ConfigDrive": CONFIG_DRIVE}
CLOUDBASE_PATHS = {"HttpService": METADATA_SERVICE, "ConfigDriveService": CONFIG_DRIVE}


@dataclass
class Outcome:
    derived: dict[str, Fact] = field(default_factory=dict)
    refusal: str | None = None
    warning: str | None = None


def verdict(ci: CloudInit, hypervisor_type: str) -> Outcome:
    """Whether a guest with this cloud-init gets its metadata on `hypervisor_type`."""
    _offered(hypervisor_type)
    if ci.installed is None:
        return Outcome(warning="no cloud-init in the guest (no cloud-init entry point, no cloudinit package): "
                               "nothing will apply the SSH key or user data from OpenStack")
    if ci.disabled is not None and ci.disabled.value:
        return Outcome(warning=f"cloud-init is disabled ({ci.disabled.evidence}): "
                               "it will not apply the SSH key or user data from OpenStack")
    if ci.unread:
        return Outcome(warning="cloud-init's datasource_list is not known: " + "; ".join(ci.unread))
    ds = ci.datasource_list
    if ds is None or ds.value is None:
        return Outcome()
    return _judge("cloud-init datasource_list", ds.value, ds.evidence, CLOUD_INIT_PATHS, hypervisor_type)


def cloudbase_verdict(cloudbase: Fact | None, hypervisor_type: str) -> Outcome:
    """The same for Windows: `cloudbase` is {"installed": bool, "metadata_services": [class paths] or None}."""
    _offered(hypervisor_type)
    if cloudbase is None or not cloudbase.value.get("installed"):
        return Outcome(warning="no cloudbase-init in the guest: nothing will apply the password, key "
                               "or user data from OpenStack")
    services = cloudbase.value.get("metadata_services")
    if services is None:
        return Outcome()  # its default list starts with HttpService, ConfigDriveService
    names = [str(s).rsplit(".", 1)[-1] for s in services]
    return _judge("cloudbase-init metadata_services", names, cloudbase.evidence, CLOUDBASE_PATHS, hypervisor_type)


def _offered(hypervisor_type: str) -> frozenset[str]:
    if hypervisor_type not in METADATA_PATHS:
        raise ValueError(f"unknown hypervisor_type {hypervisor_type!r} (known: {', '.join(METADATA_PATHS)})")
    return METADATA_PATHS[hypervisor_type]


def _judge(what: str, names: list[str], evidence: str, paths: dict[str, str], hypervisor_type: str) -> Outcome:
    offered = _offered(hypervisor_type)
    asked = [n for n in names if n.removeprefix("DataSource") in paths]
    reaches = {paths[n.removeprefix("DataSource")] for n in asked}
    shown = f"{what} [{', '.join(names)}] (from {evidence})"
    if not reaches:
        return Outcome(refusal=f"{shown} asks neither {' nor '.join(paths)}: "
                               "the guest will never get its SSH key on OpenStack")
    usable = reaches & offered
    if not usable:
        return Outcome(refusal=f"{shown} asks only {', '.join(asked)}, which {hypervisor_type} does not offer "
                               f"(it offers {', '.join(sorted(offered))}): the guest will never get its SSH key there")
    if METADATA_SERVICE not in usable:
        return Outcome(derived={"img_config_drive": Fact("mandatory", f"{shown} reaches OpenStack only "
                                                                      "through a config drive")})
    return Outcome()
