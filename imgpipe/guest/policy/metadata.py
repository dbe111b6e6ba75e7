"""Whether cloud-init (cloudbase-init) in the guest reaches a target's metadata, from what
guest.cloudinit and guest.windows read.

A guest whose datasource_list reaches neither path to OpenStack's metadata (config drive,
metadata service) boots without its SSH key, and nothing in the image upload says so. Which path
each datasource reaches was decided by booting (boot-check --config-drive / --metadata-service).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from imgpipe.guest.facts import CloudInit, Fact
from imgpipe.metadata_paths import CONFIG_DRIVE, METADATA_SERVICE

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


@dataclass(frozen=True)
class Reach:
    """The path one datasource takes to OpenStack's metadata. `alone`: only when it is the list's
    one entry (or one entry and None), which ds-identify uses unchecked; in a longer list it checks
    each, and finds Ec2 only on platforms it recognises (its strict_id default is true)."""

    path: str
    alone: bool = False


# Shown by boot-check on the Debian 12 test guest (cloud-init 22.4): the stock list (ds-identify
# finds OpenStack by nova's SMBIOS) and [ Ec2, None ] take user data from --metadata-service;
# [ ConfigDrive, None ] only from --config-drive; [ Ec2, None ] never from --config-drive.
CLOUD_INIT_PATHS = {"OpenStack": Reach(METADATA_SERVICE), "ConfigDrive": Reach(CONFIG_DRIVE),
                    "Ec2": Reach(METADATA_SERVICE, alone=True)}
CLOUDBASE_PATHS = {"HttpService": Reach(METADATA_SERVICE), "ConfigDriveService": Reach(CONFIG_DRIVE)}


@dataclass
class Outcome:
    derived: dict[str, Fact] = field(default_factory=dict)
    refusal: str | None = None
    warning: str | None = None


def verdict(ci: CloudInit, hypervisor_type: str, declared: frozenset[str] | None = None) -> Outcome:
    """Whether a guest with this cloud-init gets its metadata on `hypervisor_type`, on a cloud
    offering the `declared` paths (None: not declared, whatever the hypervisor offers)."""
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
    return _judge("cloud-init datasource_list", ds.value, ds.evidence, CLOUD_INIT_PATHS, hypervisor_type, declared)


def cloudbase_verdict(cloudbase: Fact | None, hypervisor_type: str, declared: frozenset[str] | None = None) -> Outcome:
    """The same for Windows: `cloudbase` is {"installed": bool, "metadata_services": [class paths] or None}."""
    _offered(hypervisor_type)
    if cloudbase is None or not cloudbase.value.get("installed"):
        return Outcome(warning="no cloudbase-init in the guest: nothing will apply the password, key "
                               "or user data from OpenStack")
    services = cloudbase.value.get("metadata_services")
    if services is None:
        return Outcome()  # its default list starts with HttpService, ConfigDriveService
    names = [str(s).rsplit(".", 1)[-1] for s in services]
    return _judge("cloudbase-init metadata_services", names, cloudbase.evidence, CLOUDBASE_PATHS, hypervisor_type,
                  declared)


def _offered(hypervisor_type: str) -> frozenset[str]:
    if hypervisor_type not in METADATA_PATHS:
        raise ValueError(f"unknown hypervisor_type {hypervisor_type!r} (known: {', '.join(METADATA_PATHS)})")
    return METADATA_PATHS[hypervisor_type]


def _judge(what: str, names: list[str], evidence: str, paths: dict[str, Reach], hypervisor_type: str,
           declared: frozenset[str] | None) -> Outcome:
    """Refused when the list reaches no path the target offers; img_config_drive=mandatory when
    it reaches only the drive; a warning when only the metadata service, on a cloud whose paths
    are not declared (it may give guests a config drive only)."""
    offered = _offered(hypervisor_type) & (_BOTH if declared is None else declared)
    alone = len(names) == 1 or (len(names) == 2 and names[1] == "None")
    reach = {n: r for n in names if (r := paths.get(n.removeprefix("DataSource"))) and (alone or not r.alone)}
    reaches = {r.path for r in reach.values()}
    shown = f"{what} [{', '.join(names)}] (from {evidence})"
    if not reaches:
        return Outcome(refusal=f"{shown} asks {_none_of(paths)}: the guest will never get its SSH key on OpenStack")
    usable = reaches & offered
    if not usable:
        target = hypervisor_type if declared is None else f"{hypervisor_type} on a cloud declaring {_said(declared)}"
        return Outcome(refusal=f"{shown} reaches OpenStack only through the {_said(reaches)} ({', '.join(reach)}), "
                               f"which {target} does not offer: the guest will never get its SSH key there")
    if usable == {CONFIG_DRIVE}:
        return Outcome(derived={"img_config_drive": Fact("mandatory", f"{shown} reaches OpenStack only "
                                                                      "through a config drive")})
    if usable == {METADATA_SERVICE} and declared is None and CONFIG_DRIVE in offered:
        return Outcome(warning=f"{shown} reaches OpenStack only through the metadata service: on a cloud that "
                               "gives guests only a config drive it never gets its SSH key (declare the cloud's "
                               "paths in clouds.yaml, imgpipe: {metadata: [...]}, to check it exactly)")
    return Outcome()


def _said(paths: frozenset[str] | set[str]) -> str:
    return " and ".join(sorted(p.replace("-", " ") for p in paths))


def _none_of(paths: dict[str, Reach]) -> str:
    alone = [n for n, r in paths.items() if r.alone]
    named = [n for n in paths if n not in alone] + [f"{n} alone" for n in alone]
    return "neither " + " nor ".join(named) if len(named) == 2 else "none of " + ", ".join(named)
