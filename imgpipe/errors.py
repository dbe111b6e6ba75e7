"""Every user-facing error. The CLI maps each class to its exit code (see cli.EXIT_CODES).

Messages are one line and name the file (or cloud) and the problem, so a CI log shows
what to fix without a traceback.
"""


class ImgpipeError(Exception):
    """Base of every error imgpipe reports to a user."""


class ProfileError(ImgpipeError):
    """A profile file is missing, unreadable or invalid."""


class SourceError(ImgpipeError):
    """The source file does not exist or cannot be read."""


class UnsafeImageError(ImgpipeError):
    """The image failed a safety check (backing file, external extents, not an image, truncated)."""


class FormatMismatchError(ImgpipeError):
    """The format the user claimed disagrees with the content."""


class ImageTooLargeError(ImgpipeError):
    """The virtual size exceeds the configured limit."""


class NoSpaceError(ImgpipeError):
    """The output directory cannot hold the outputs."""


class ConversionError(ImgpipeError):
    """qemu-img (or packaging) failed, or the output failed its re-inspection or compare."""


class ToolMissingError(ImgpipeError):
    """A required external command (qemu-img, ...) is not installed."""


class CloudConfigError(ImgpipeError):
    """The cloud is unknown or its configuration/credentials are unusable."""


class AuthError(ImgpipeError):
    """Keystone refused the credentials."""


class GlanceRefusedError(ImgpipeError):
    """Glance refused a request with a client error that retrying cannot fix."""


class UploadError(ImgpipeError):
    """The upload failed after retries, or Glance's hashes disagree with ours."""


class CatalogError(ImgpipeError):
    """A catalog file is invalid."""


class ChecksumError(ImgpipeError):
    """A downloaded source does not match its expected checksum."""


class LockedError(ImgpipeError):
    """Another sync holds the lock for this cloud."""


class PartialFailure(ImgpipeError):
    """Some items of a multi-item run failed; the report says which."""


class BootCheckError(ImgpipeError):
    """An output did not show its login prompt (or --expect) under QEMU in time."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail  # the serial log's last lines, printed below the one-line message


class ImportFailedError(UploadError):
    """Glance's interoperable import (glance-direct, web-download, copy-image) failed or
    changed the image (a conversion plugin); the image was deleted."""


class GuestRefusedError(ImgpipeError):
    """The guest cannot boot on a profile's target (firmware, boot path, init, disk driver)."""


class GuestInspectionError(ImgpipeError):
    """A guest filesystem is corrupt or hostile: inspection stopped rather than guess."""


class SigningError(ImgpipeError):
    """The signing key or certificate cannot make a signature Glance and nova would accept."""


class KeyManagerError(ImgpipeError):
    """The cloud's key manager (Barbican) is missing, unreachable or refused a request."""


class SignatureInvalidError(ImgpipeError):
    """An image's signature or its certificate does not verify (as nova would find on boot)."""


class OutputPathError(ImgpipeError):
    """The output cannot go where it was asked to (a directory given as -o, a missing or
    read-only output directory): refused before any work."""


class LocalIOError(ImgpipeError):
    """The operating system refused to read or write a local file (permissions, an I/O error,
    a file where a directory was expected); any OSError that reaches the CLI becomes this."""


class SettingError(ImgpipeError):
    """An IMGPIPE_* environment variable holds a value imgpipe cannot use: a usage error like a
    bad option, reported before any work."""


class OverBudgetError(GuestInspectionError):
    """Reading an untrusted image went over a budget: a tool's wall clock, CPU or output, or
    what an inspection may read and hold (guest/fs/budget.py)."""
