#!/usr/bin/env python3
"""`make demo`: the main job end to end on the embedded default.

Builds a realistic 2 GiB guest disk (GPT, EFI + ext4 root with 200 MiB of real files,
compressed qcow2 like distribution cloud images) and a small `docker save` archive, starts
a real local Glance, and publishes the disk for every hypervisor profile (plus docker),
verifying each conversion with qemu-img compare and each upload against Glance's hashes.
Then it signs: a second local cloud with Keystone and Barbican (as clouds whose nova verifies
signatures run), a generated RSA key and certificate, `publish --sign-key ... --verify-signature`
of the kvm image and `imgpipe verify` of it, as nova would check it before booting.
Running it again shows every image as "unchanged".
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

from imgpipe_dev import localcloud, sample_disk

ROOT = Path(__file__).resolve().parents[2]

DEMO = ROOT / ".demo"
IMGPIPE = [sys.executable, "-m", "imgpipe.cli"]


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    disk = DEMO / "guest-2g.qcow2"
    if not disk.exists():
        print("building a 2 GiB sample guest disk (EFI + ext4 root, 200 MiB of files)...", flush=True)
        sample_disk.build(disk, size_mib=2048, data_mib=200)
    archive = sample_disk.docker_archive(DEMO / "demo-docker.tar", ["imgpipe/demo:1.0"])
    cloud = localcloud.start(DEMO / "cloud", name="demo")
    print(cloud.summary(), flush=True)
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml)}
    work = DEMO / "work"
    work.mkdir(exist_ok=True)
    steps = [
        [*IMGPIPE, "inspect", str(disk)],
        [*IMGPIPE, "publish", str(disk), "-p", "all", "--name", "demo-guest", "--cloud", "demo",
         "--verify", "--work-dir", str(work)],
        [*IMGPIPE, "publish", str(archive), "-p", "docker", "--name", "unused", "--cloud", "demo",
         "--work-dir", str(work)],
    ]
    code = _run(steps, env)
    if code:
        return code
    signed = localcloud.start(DEMO / "signed-cloud", name="demo-signed", keystone=True, barbican=True)
    print(signed.summary(), flush=True)
    key, cert = _signing_pair(DEMO / "signing")
    code = _run([
        [*IMGPIPE, "publish", str(disk), "-p", "kvm", "--name", "demo-signed", "--cloud", "demo-signed",
         "--work-dir", str(work), "--sign-key", str(key), "--sign-cert", str(cert), "--verify-signature"],
        [*IMGPIPE, "verify", "demo-signed-kvm", "--cloud", "demo-signed"],
    ], {**os.environ, "OS_CLIENT_CONFIG_FILE": str(signed.clouds_yaml)})
    if code:
        return code
    print(f"\nGlance keeps running at {cloud.glance_url} (clouds.yaml: {cloud.clouds_yaml}), the signing "
          f"cloud at {signed.glance_url} (clouds.yaml: {signed.clouds_yaml}); stop them with: make clean")
    return 0


def _run(steps: list[list[str]], env: dict[str, str]) -> int:
    for argv in steps:
        print("$ imgpipe " + " ".join(argv[3:]), flush=True)
        code = subprocess.run(argv, env=env).returncode
        if code:
            return code
    return 0


def _signing_pair(folder: Path) -> tuple[Path, Path]:
    """A demo RSA key (no password: a real one would come with --sign-key-password-file) and its
    self-signed certificate, made once."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key_path, cert_path = folder / "demo-signer.key", folder / "demo-signer.crt"
    if key_path.exists() and cert_path.exists():
        return key_path, cert_path
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(65537, 3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgpipe demo signer")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


if __name__ == "__main__":
    sys.exit(main())
