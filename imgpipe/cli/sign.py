"""Signing options (upload, publish) and `imgpipe verify`: signed images for clouds whose nova
runs with verify_glance_signatures."""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imgpipe import errors, render, settings
from imgpipe.cli.base import app, handled, settings_of
from imgpipe.cli.options import CacertOpt, CloudOpt, InsecureOpt, JsonOpt, RetriesOpt, TimeoutOpt, connection

if TYPE_CHECKING:
    from imgpipe.cloud.clouds import Cloud
    from imgpipe.signing import Signer


class SignHash(str, enum.Enum):
    """Glance's img_signature_hash_method values."""

    sha224 = "SHA-224"
    sha256 = "SHA-256"
    sha384 = "SHA-384"
    sha512 = "SHA-512"


SignKeyOpt = Annotated[Path | None, typer.Option(
    "--sign-key", metavar="KEY",
    help="Sign the uploaded bytes with this private key (PEM/DER; RSA, EC P-384/P-521, DSA).")]
SignKeyPasswordFileOpt = Annotated[Path | None, typer.Option(
    "--sign-key-password-file", metavar="FILE",
    help="The key's password (first line); else $IMGPIPE_SIGN_KEY_PASSWORD. Never prompted.")]
SignCertOpt = Annotated[Path | None, typer.Option(
    "--sign-cert", metavar="CERT",
    help="The key's X.509 certificate; stored in each cloud's Barbican (reused if there).")]
SignCertIdOpt = Annotated[str | None, typer.Option(
    "--sign-cert-id", metavar="SECRET_ID",
    help="Barbican secret id of the key's certificate (instead of --sign-cert).")]
SignHashOpt = Annotated[SignHash, typer.Option("--sign-hash", help="img_signature_hash_method.")]


def signer(key: Path | None, password_file: Path | None, cert: Path | None, cert_id: str | None,
           hash_method: SignHash) -> Signer | None:
    """The run's signer, or None without --sign-key; usage errors for half-given options."""
    if key is None:
        if cert or cert_id or password_file:
            raise typer.BadParameter("--sign-cert, --sign-cert-id and --sign-key-password-file need --sign-key")
        return None
    if (cert is None) == (cert_id is None):
        raise typer.BadParameter("--sign-key needs one of --sign-cert or --sign-cert-id")
    from imgpipe import signing

    return signing.load(key, password=signing.read_password(password_file, dict(os.environ)), certificate=cert,
                        certificate_id=cert_id, hash_method=hash_method.value)


@app.command("verify")
@handled
def verify_cmd(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="Image id or name.")],
    cloud: CloudOpt = None,
    trusted_cert_id: Annotated[list[str] | None, typer.Option(
        "--trusted-cert-id", metavar="SECRET_ID",
        help="Also validate the signing certificate against these Barbican secrets (nova's "
             "trusted_image_certificates; repeatable).")] = None,
    retries: RetriesOpt = settings.RETRY_ATTEMPTS,
    timeout: TimeoutOpt = settings.REQUEST_TIMEOUT,
    insecure: InsecureOpt = False,
    os_cacert: CacertOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download IMAGE as nova does and verify its signature (and certificate), or fail with exit 25."""
    run = settings_of(ctx, as_json)
    from imgpipe.cloud import verify

    targets = connection(cloud, insecure, os_cacert, retries, timeout).connect_all()
    results = [verify.verify(target, image, trusted_cert_id or []) for target in targets]
    if as_json:
        run.emit_json({"verified": [r.to_dict() for r in results]})
    else:
        render.table("verified", ["cloud", "image", "key type", "hash", "certificate", "bytes"],
                     [(r.cloud, r.image_id, r.key_type, r.hash_method, r.certificate_uuid, str(r.size))
                      for r in results])


def verify_published(published: list[tuple[Cloud, str]]) -> None:
    """publish --verify-signature: each (cloud, image id) verified as nova would, after the upload."""
    from imgpipe.cloud import verify

    failures = []
    for target, image_id in published:
        try:
            verify.verify(target, image_id, [])
        except errors.SignatureInvalidError as exc:
            failures.append(str(exc))
    if failures:
        raise errors.SignatureInvalidError("; ".join(failures))
