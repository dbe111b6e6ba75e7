"""cloud-init in a Linux guest, read as cloud-init itself would (policy.metadata judges it).

A guest whose datasource_list asks neither OpenStack nor ConfigDrive boots on OpenStack without
its SSH key, and nothing in the image upload says so. The configuration is the guest's, hence
untrusted: every file is bounded, alias expansion and nesting are bounded, and a file this
cannot read safely makes the verdict a warning instead of a guess.

cloud-init's merge (cloudinit.util.read_conf_with_confd + mergemanydict, default mergers): the
sources are taken highest priority first, /etc/cloud/cloud.cfg.d/*.cfg in reverse lexical order,
then /etc/cloud/cloud.cfg; a key keeps the value of the first source that sets it, mappings are
merged key by key, lists and scalars are never combined. A file that is not YAML, or whose top
level is not a mapping, is logged and ignored (util.load_yaml returns the default {}).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

import yaml

from imgpipe.guest.facts import CloudInit, Fact
from imgpipe.guest.fs import tree
from imgpipe.guest.fs.tree import Tree

MAX_FILE = 64 << 10
MAX_FILES = 64
MAX_DEPTH = 32
MAX_NODES = 100_000  # after alias expansion
MAX_CMDLINE_FILE = 1 << 20  # grub.cfg with many kernels outgrows 64 KiB; it is only scanned, never parsed
CLOUD_CFG = "/etc/cloud/cloud.cfg"
ENTRY_POINTS = ("/usr/bin/cloud-init", "/usr/local/bin/cloud-init")
DISABLED_MARKER = "/etc/cloud/cloud-init.disabled"

# (files whose every line is a command line, files with prefixed lines, directories of the latter)
_ROOT_CMDLINES = (("/etc/kernel/cmdline",),
                  ("/boot/grub/grub.cfg", "/boot/grub2/grub.cfg", "/boot/grub2/grubenv", "/etc/default/grub"),
                  (("/boot/loader/entries", ".conf"), ("/etc/default/grub.d", ".cfg")))
_BOOT_CMDLINES = ((), ("/grub/grub.cfg", "/grub2/grub.cfg", "/grub2/grubenv"), (("/loader/entries", ".conf"),))
_CMDLINE_LINE = re.compile(r"\s*(linux|linux16|linuxefi|options|set\s+kernelopts=|kernelopts=|"
                           r"GRUB_CMDLINE_LINUX(_DEFAULT)?=)")
_SWITCH = re.compile(r"(?:^|[\s\"'])cloud-init=(disabled|enabled)(?=$|[\s\"'])")
_VERSION = re.compile(r"^__VERSION__\s*=\s*[\"']([^\"']+)[\"']", re.MULTILINE)
_DIST = re.compile(r"cloud_init-([0-9][^-]*?)(?:-py[0-9.]+)?\.(?:dist|egg)-info")


class _Refused(yaml.YAMLError):
    """YAML that cloud-init would load but that is not safe to load here."""


class _UntrustedLoader(yaml.SafeLoader):
    """SafeLoader with bounded nesting (the composer recurses once per level) and bounded alias
    expansion: stock files use anchors (Debian's 05_logging.cfg), but a few KiB of nested aliases
    stand for billions of nodes to anything that walks the result."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # types-PyYAML leaves it unannotated
        if self._depth >= MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels (line {event.start_mark.line + 1})")
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is not None and id(node) not in self._sizes:
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
            if self._sizes[id(node)] > MAX_NODES:
                raise _Refused(f"aliases expanding to more than {MAX_NODES} nodes (line {event.start_mark.line + 1})")
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_cloud_init(root: Tree, label: str, boot: Tree | None = None, boot_label: str = "") -> CloudInit:
    ci = CloudInit()
    ci.installed, ci.version = _installed(root, label)
    sources = _sources(root, label, ci)
    ci.datasource_list = _datasource_list(sources, label)
    ci.default_user = _default_user(sources, label)
    ci.disabled = _disabled(root, label, boot, boot_label or "boot", ci.notes)
    return ci


def _installed(root: Tree, label: str) -> tuple[Fact | None, Fact | None]:
    found = [p for p in ENTRY_POINTS if _kind(root, p) == "file"]
    packages = [p for p in _package_dirs(root) if _kind(root, p) == "dir"]
    if not found and not packages:
        return None, None
    installed = Fact(True, f"{label} {', '.join(found + packages)}")
    for package in packages:
        got = tree.read(root, f"{package}/version.py", MAX_FILE)
        if got and (match := _VERSION.search(got[1].decode(errors="replace"))):
            return installed, Fact(match.group(1), f"{label} {got[0]} (__VERSION__)")
        parent = posixpath.dirname(package)
        for name in sorted((tree.listdir(root, parent) or ("", []))[1]):
            if match := _DIST.fullmatch(name):
                return installed, Fact(match.group(1), f"{label} {parent}/{name}")
    return installed, None


def _package_dirs(root: Tree) -> list[str]:
    """/usr/lib/python3*/{site,dist}-packages/cloudinit; Debian's /usr/lib/python3 comes first."""
    pythons = sorted(n for n in (tree.listdir(root, "/usr/lib") or ("", []))[1] if n.startswith("python3"))
    return [f"/usr/lib/{py}/{kind}/cloudinit"
            for py in pythons[:MAX_FILES] for kind in ("dist-packages", "site-packages")]


def _kind(root: Tree, path: str) -> str | None:
    real = tree.resolve(root, path)
    node = root.lstat(real) if real else None
    return node.kind if node else None


def _sources(root: Tree, label: str, ci: CloudInit) -> list[tuple[str, dict[str, Any]]]:
    """The files cloud-init merges, highest priority first, each (evidence, mapping)."""
    base = _load(root, CLOUD_CFG, label, ci)
    confd = CLOUD_CFG + ".d"
    if base is not None and "conf_d" in base:
        value = base["conf_d"]
        if isinstance(value, str) and value.strip():
            confd = value.strip()
        else:
            confd = ""
            if value:
                ci.notes.append(f"{label} {CLOUD_CFG}: conf_d is not a string, cloud-init stops with a TypeError")
    sources: list[tuple[str, dict[str, Any]]] = []
    listing = tree.listdir(root, confd) if confd else None
    if listing:
        names = sorted(n for n in listing[1] if n.endswith(".cfg"))
        if len(names) > MAX_FILES:
            ci.unread.append(f"{label} {confd}: {len(names)} .cfg files, only the last {MAX_FILES} read")
            names = names[-MAX_FILES:]
        for name in reversed(names):
            path = f"{confd.rstrip('/')}/{name}"
            doc = _load(root, path, label, ci)
            if doc:
                sources.append((f"{label} {path}", doc))
    if base:
        sources.append((f"{label} {CLOUD_CFG}", base))
    for where, doc in sources:
        if "merge_how" in doc or "merge_type" in doc:
            ci.notes.append(f"{where} sets its own merge rules; it was merged with cloud-init's default rules")
    return sources


def _load(root: Tree, path: str, label: str, ci: CloudInit) -> dict[str, Any] | None:
    """The mapping in one file: None if missing or refused, {} where cloud-init ignores it too."""
    got = tree.read(root, path, MAX_FILE + 1)
    if got is None:
        return None
    where = f"{label} {path}"
    if len(got[1]) > MAX_FILE:
        ci.unread.append(f"{where} is larger than {MAX_FILE >> 10} KiB, not read")
        return None
    try:
        doc = yaml.load(got[1].decode(), Loader=_UntrustedLoader)
    except _Refused as e:
        ci.unread.append(f"{where} has {e}, not read")
        return None
    except (yaml.YAMLError, ValueError) as e:
        ci.notes.append(f"{where} is not valid YAML ({_problem(e)}): cloud-init logs it and ignores the file")
        return {}
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        ci.notes.append(f"{where}: top level is a {type(doc).__name__}, not a mapping: cloud-init ignores the file")
        return {}
    return doc


def _problem(e: Exception) -> str:
    if isinstance(e, yaml.MarkedYAMLError) and e.problem_mark is not None:
        return f"{e.problem or e.context}, line {e.problem_mark.line + 1}"
    return " ".join(str(e).split())[:200]


def _lookup(sources: list[tuple[str, Any]], *path: str) -> tuple[Any, str] | None:
    """The value cloud-init's default merge gives `path` and the source that set it."""
    key, rest = path[0], path[1:]
    having = [(where, doc[key]) for where, doc in sources if isinstance(doc, dict) and key in doc]
    if not having:
        return None
    where, value = having[0]
    if not rest:
        return value, where
    return _lookup([(w, v) for w, v in having if isinstance(v, dict)], *rest) if isinstance(value, dict) else None


def _datasource_list(sources: list[tuple[str, dict[str, Any]]], label: str) -> Fact:
    found = _lookup(sources, "datasource_list")
    if found is None:
        read = ", ".join(where.removeprefix(f"{label} ") for where, _ in reversed(sources)) or "no configuration file"
        return Fact(None, f"no datasource_list in {label} {read}: cloud-init's built-in list")
    value, where = found
    return Fact(_names(value), where)


def _names(value: Any) -> list[str]:
    """A list as cloud-init and ds-identify take it; null or empty asks no datasource at all."""
    if value is None:
        return []
    if isinstance(value, str):
        return [n.strip() for n in value.strip().strip("[]").split(",") if n.strip()]
    if isinstance(value, list):
        return [str(n).strip() for n in value]
    return [str(value)]


def _default_user(sources: list[tuple[str, dict[str, Any]]], label: str) -> Fact | None:
    users = _lookup(sources, "users")
    if users is not None:
        listed = users[0].split(",") if isinstance(users[0], str) else users[0]
        if isinstance(listed, list) and "default" not in [str(u).strip() for u in listed]:
            return Fact(None, f"{users[1]} (users does not include default)")
    name = _lookup(sources, "system_info", "default_user", "name")
    if name is None:
        return None
    return Fact(str(name[0]), f"{name[1]} (system_info.default_user.name)")


def _disabled(root: Tree, label: str, boot: Tree | None, boot_label: str, notes: list[str]) -> Fact | None:
    """cloud-init's systemd generator: `cloud-init=disabled|enabled` on the kernel command line
    wins over the /etc/cloud/cloud-init.disabled marker."""
    switches = _switches(root, label, _ROOT_CMDLINES)
    if boot is not None:
        switches += _switches(boot, boot_label, _BOOT_CMDLINES)
    off = [where for value, where in switches if value == "disabled"]
    if off:
        return Fact(True, f"cloud-init=disabled on the kernel command line: {off[0]}")
    if _kind(root, DISABLED_MARKER) is None:
        return None
    on = [where for value, where in switches if value == "enabled"]
    if on:
        notes.append(f"{label} {DISABLED_MARKER} is overridden by cloud-init=enabled: {on[0]}")
        return None
    return Fact(True, f"{label} {DISABLED_MARKER}")


def _switches(root: Tree, label: str,
              where: tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]) -> list[tuple[str, str]]:
    whole, prefixed, dirs = where
    files = [(p, True) for p in whole] + [(p, False) for p in prefixed]
    for directory, suffix in dirs:
        names = sorted(n for n in (tree.listdir(root, directory) or ("", []))[1] if n.endswith(suffix))
        files += [(f"{directory}/{n}", False) for n in names[:MAX_FILES]]
    found = []
    for path, every_line in files:
        got = tree.read(root, path, MAX_CMDLINE_FILE)
        if got is None:
            continue
        for number, line in enumerate(got[1].decode(errors="replace").splitlines(), 1):
            if line.lstrip().startswith("#") or not (every_line or _CMDLINE_LINE.match(line)):
                continue
            found += [(m.group(1), f"{label} {path} line {number}") for m in _SWITCH.finditer(line)]
    return found
