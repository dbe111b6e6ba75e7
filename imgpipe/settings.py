"""Defaults shared by the CLI and the modules behind it, importable without loading them.

The CLI needs these for option defaults; keeping them here lets `imgpipe convert` start
without importing openstacksdk, keystoneauth and the catalog machinery (~0.3 s).
"""

NAME_TEMPLATE = "{name}-{profile}"
BOOT_EXPECT = r"login:"  # boot-check: what on the serial console means booted
BOOT_TIMEOUT = 300.0
# Seconds a request may go without progress; matches the local Glance's gunicorn --timeout.
REQUEST_TIMEOUT = 120.0
RETRY_ATTEMPTS = 6
SYNC_JOBS = 2
DEFAULT_MAX_VIRTUAL_SIZE = 1 << 40  # 1 TiB, Glance's default image_size_cap
