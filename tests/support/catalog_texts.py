"""A good catalog and its loader, shared by the catalog model's tests and the guest-property ones."""
from __future__ import annotations

from pathlib import Path

from imgpipe import profiles
from imgpipe.catalog import model as catalog_model

SHA = "ab" * 32
KNOWN = profiles.load_all()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str) -> catalog_model.Catalog:
    return catalog_model.load(write(tmp_path, text), KNOWN)


GOOD = f"""\
defaults:
  clouds: [east, west]
  profiles: [kvm, vmware]
  visibility: public
  tags: [catalog]
  properties: {{os_distro: ubuntu}}
  retention: {{keep: 2, expire_after: 4, expire: delete}}
images:
  - name: ubuntu-24.04
    properties: {{os_version: "24.04"}}
    tags: [lts]
    versions:
      - version: "20240401"
        source: https://127.0.0.1/noble-20240401.img
        checksum_url: https://127.0.0.1/20240401/SHA256SUMS
      - version: 20240501
        source: images/noble.qcow2
        sha256: {SHA.upper()}
  - name: debian-12
    name_template: "{{name}}-{{version}}-{{profile}}"
    profiles: [hyperv]
    clouds: [east]
    retention: {{keep: 1}}
    versions:
      - {{version: "12.5", source: /srv/debian.qcow2, sha256: "{SHA}"}}
"""
