"""The catalog file: which images, which versions, on which clouds, and how long old ones live.

It is edited by hand and run unattended from cron/CI, so everything is validated before any
network call and every error names FILE:LINE and the key (the line comes from composing the
YAML nodes, which keep their positions, and mapping pydantic's error location onto them).
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from imgpipe import settings
from imgpipe.cloud.import_method import ImportMethod, Placement
from imgpipe.errors import CatalogError
from imgpipe.metadata_paths import MetadataPath
from imgpipe.profiles import RESERVED, RESERVED_PREFIXES, Profile, describe_validation_error

# Set on every image a catalog sync creates, next to publish's imgpipe_profile/_source_sha256.
IMAGE_KEY = "imgpipe_catalog_image"
VERSION_KEY = "imgpipe_catalog_version"
OWN_PREFIXES = ("imgpipe_", "owner_specified.openstack.")
LABEL = r"^[A-Za-z0-9][A-Za-z0-9._+~:-]*$"
TEMPLATE_FIELDS = frozenset({"name", "profile", "version"})
DEFAULT_TEMPLATE = settings.NAME_TEMPLATE
Visibility = Literal["private", "shared", "community", "public"]


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _location(value: str, info: ValidationInfo) -> str:
    """http(s) URLs stay as they are; paths become absolute, relative to the catalog file."""
    if is_url(value):
        return value
    if "://" in value:
        raise ValueError(f"{value!r}: only http(s) URLs or local paths are supported")
    base = (info.context or {}).get("base", Path("."))
    return str((base / Path(value).expanduser()).resolve())


def _text(value: Any) -> Any:
    """Scalars as Glance stores them; floats refused, as YAML reads 24.10 as 24.1."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        raise ValueError(f"{value!r}: write it in quotes (YAML reads it as a number and drops trailing zeros)")
    return str(value) if isinstance(value, int) else value


class Retention(BaseModel):
    """Newest `keep` versions visible; older ones hidden (os_hidden); from `expire_after` on,
    deactivated or deleted. Without expire_after, old versions stay hidden for good."""

    model_config = ConfigDict(extra="forbid")
    keep: int = Field(1, ge=1)
    expire_after: int | None = Field(None, ge=1)
    expire: Literal["deactivate", "delete"] = "deactivate"

    @model_validator(mode="after")
    def _expire_after_keep(self) -> Retention:
        if self.expire_after is not None and self.expire_after < self.keep:
            raise ValueError(f"expire_after ({self.expire_after}) must be >= keep ({self.keep})")
        return self


class Version(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(pattern=LABEL)
    source: str
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    checksum_url: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _label_as_text(cls, value: Any) -> Any:
        return _text(value)

    @field_validator("source", "checksum_url")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _location(value, info)

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @model_validator(mode="after")
    def _one_checksum(self) -> Version:
        if (self.sha256 is None) == (self.checksum_url is None):
            raise ValueError("give exactly one of sha256 or checksum_url: a source is never used unverified")
        return self


class Signing(BaseModel):
    """Sign an image's uploads (catalog `signing:`, per image or in defaults): the key, and its
    certificate as a file (stored in each cloud's Barbican) or as a Barbican secret id."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str
    password_file: str | None = None  # else $IMGPIPE_SIGN_KEY_PASSWORD, or no password
    certificate: str | None = None
    certificate_id: str | None = None
    hash_method: Literal["SHA-224", "SHA-256", "SHA-384", "SHA-512"] = "SHA-256"

    @field_validator("key", "password_file", "certificate")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _location(value, info)

    @model_validator(mode="after")
    def _one_certificate(self) -> Signing:
        if (self.certificate is None) == (self.certificate_id is None):
            raise ValueError("give exactly one of certificate (a file) or certificate_id (a Barbican secret)")
        if is_url(self.key) or (self.certificate and is_url(self.certificate)):
            raise ValueError("the signing key and certificate are local files")
        return self


class Defaults(BaseModel):
    """Keys every image inherits unless it sets them (properties and tags are merged)."""

    model_config = ConfigDict(extra="forbid")
    name_template: str | None = None
    profiles: list[str] | None = None
    clouds: list[str] | None = None
    visibility: Visibility | None = None
    tags: list[str] | None = None
    properties: dict[str, Any] | None = None
    retention: Retention | None = None
    signing: Signing | None = None


class CloudSettings(BaseModel):
    """Per cloud (catalog `clouds:`): where its images go and how they get there."""

    model_config = ConfigDict(extra="forbid")
    import_method: ImportMethod = ImportMethod.auto
    stores: list[str] = Field(default_factory=list)
    all_stores: bool = False
    allow_partial_stores: bool = False
    # How the cloud hands a guest its metadata (wins over its clouds.yaml `imgpipe: {metadata: ...}`);
    # makes the datasource refusal exact for this cloud.
    metadata: list[MetadataPath] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _stores_or_all(self) -> CloudSettings:
        if self.stores and self.all_stores:
            raise ValueError("give stores or all_stores, not both")
        _no_repeats(self.stores)
        return self


class Image(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=LABEL)
    # Overrides the cloud's import_method for this image, e.g. put for a vmdk on a converting cloud.
    import_method: ImportMethod | None = None
    name_template: str = DEFAULT_TEMPLATE
    profiles: list[str] = Field(min_length=1)
    clouds: list[str] = Field(min_length=1)
    visibility: Visibility = "private"
    tags: list[str] = Field(default_factory=list)
    properties: dict[str, str] = Field(default_factory=dict)
    # Per profile, e.g. {vmware: {vmware_ostype: ubuntu64Guest}}; os_distro must not reach vmware.
    profile_properties: dict[str, dict[str, str]] = Field(default_factory=dict)
    # Derive boot properties (architecture, os_distro, hw_firmware_type, ...) from the guest.
    guest_properties: bool = True
    retention: Retention = Field(default_factory=Retention)
    signing: Signing | None = None
    versions: list[Version] = Field(min_length=1)

    @field_validator("name_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(value) if f is not None]
        if any(spec or conv for _, spec, conv in parts):
            raise ValueError("plain {name}, {profile} and {version} only, without format specs")
        fields = {f for f, _, _ in parts}
        unknown = fields - TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown field {{{sorted(unknown)[0]}}}: use {{name}}, {{profile}}, {{version}}")
        if "profile" not in fields:
            raise ValueError("must contain {profile}: each profile is a separate Glance image")
        return value

    @field_validator("profiles")
    @classmethod
    def _known_profiles(cls, value: list[str], info: ValidationInfo) -> list[str]:
        _no_repeats(value)
        known: dict[str, Profile] | None = (info.context or {}).get("profiles")
        for name in value:
            if known is None:
                break
            if name not in known:
                raise ValueError(f"unknown profile {name!r}: known are {', '.join(sorted(known))}")
            if known[name].package == "docker-archive":
                raise ValueError(f"{name}: docker archives are not disk images; publish them with `imgpipe publish`")
        return value

    @field_validator("clouds")
    @classmethod
    def _unique_clouds(cls, value: list[str]) -> list[str]:
        return _no_repeats(value)

    @field_validator("properties", mode="before")
    @classmethod
    def _properties_as_text(cls, value: Any) -> Any:
        return {str(k): _text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("properties")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        _settable(value)
        return value

    @field_validator("profile_properties", mode="before")
    @classmethod
    def _profile_properties_as_text(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        return {str(p): ({str(k): _text(v) for k, v in props.items()} if isinstance(props, dict) else props)
                for p, props in value.items()}

    @model_validator(mode="after")
    def _profile_properties_known(self) -> Image:
        for profile, props in self.profile_properties.items():
            if profile not in self.profiles:
                raise ValueError(f"profile_properties.{profile}: not one of this image's profiles "
                                 f"({', '.join(self.profiles)})")
            _settable(props)
        return self

    @field_validator("versions")
    @classmethod
    def _unique_versions(cls, value: list[Version]) -> list[Version]:
        _no_repeats([v.version for v in value])
        return value

    def image_name(self, profile: str, version: str) -> str:
        return self.name_template.format(name=self.name, profile=profile, version=version)

    def wanted(self) -> list[Version]:
        """Versions that must be published: the newest `keep` (last listed = newest)."""
        return self.versions[-self.retention.keep:]


def _settable(props: dict[str, str]) -> None:
    for key in props:
        if key in RESERVED or key.startswith(RESERVED_PREFIXES):
            raise ValueError(f"{key}: reserved by Glance, cannot be set as a property")
        if key.startswith(OWN_PREFIXES):
            raise ValueError(f"{key}: set by imgpipe itself (provenance), cannot be set in a catalog")


def _no_repeats(values: list[str]) -> list[str]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{value!r} is listed twice")
        seen.add(value)
    return values


class Catalog(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: Defaults = Field(default_factory=Defaults)
    clouds: dict[str, CloudSettings] = Field(default_factory=dict)
    images: list[Image] = Field(min_length=1)

    def placement(self, image: Image, cloud: str) -> Placement:
        """How image goes to cloud: the cloud's stores, the image's or else the cloud's method."""
        cfg = self.clouds.get(cloud, CloudSettings())
        return Placement(image.import_method or cfg.import_method, tuple(cfg.stores),
                         cfg.all_stores, cfg.allow_partial_stores)

    def metadata_paths(self, cloud: str) -> frozenset[str] | None:
        listed = self.clouds.get(cloud, CloudSettings()).metadata
        return None if listed is None else frozenset(listed)

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict) \
                or not isinstance(data.get("images"), list):
            return data
        defaults = {k: v for k, v in data["defaults"].items() if v is not None}
        return {**data, "images": [_inherit(defaults, i) if isinstance(i, dict) else i for i in data["images"]]}

    @field_validator("images")
    @classmethod
    def _unique_names(cls, value: list[Image]) -> list[Image]:
        _no_repeats([i.name for i in value])
        return value


def _inherit(defaults: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **image}
    own_props, own_tags = image.get("properties"), image.get("tags")
    if isinstance(defaults.get("properties"), dict) and isinstance(own_props, dict):
        merged["properties"] = {**defaults["properties"], **own_props}
    if isinstance(defaults.get("tags"), list) and isinstance(own_tags, list):
        merged["tags"] = [*defaults["tags"], *(t for t in own_tags if t not in defaults["tags"])]
    return merged


def load(path: Path, profiles: dict[str, Profile] | None = None) -> Catalog:
    """Read and validate a catalog; `profiles` (name -> Profile) checks the profile names."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read: {exc.strerror}") from exc
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{mark.line + 1}:" if mark else ""
        raise CatalogError(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict) or node is None:
        raise CatalogError(f"{path}: expected a mapping with an 'images' list")
    context = {"profiles": profiles, "base": path.resolve().parent}
    try:
        return Catalog.model_validate(data, context=context)
    except ValidationError as exc:
        line = _line(_lines(node), exc.errors()[0]["loc"])
        raise CatalogError(f"{path}:{line}: {describe_validation_error(exc)}") from exc


def _lines(node: yaml.Node) -> dict[tuple[Any, ...], int]:
    """Key path -> line number, for every mapping key and sequence item in the document."""
    lines: dict[tuple[Any, ...], int] = {(): node.start_mark.line + 1}
    todo: list[tuple[tuple[Any, ...], yaml.Node]] = [((), node)]
    while todo:
        path, current = todo.pop()
        if isinstance(current, yaml.MappingNode):
            children = [((*path, key.value), key, value) for key, value in current.value]
        elif isinstance(current, yaml.SequenceNode):
            children = [((*path, i), item, item) for i, item in enumerate(current.value)]
        else:
            continue
        for child_path, marker, child in children:
            lines[child_path] = marker.start_mark.line + 1
            todo.append((child_path, child))
    return lines


def _line(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    """The line of the deepest part of the error location that exists in the file."""
    for depth in range(len(loc), -1, -1):
        if tuple(loc[:depth]) in lines:
            return lines[tuple(loc[:depth])]
    return 1
