"""Development tools, not part of the product: the local Glance/Keystone (localcloud), the sample
guests the tests, demo and bench build (sample_disk, debian_guest), `make demo` and `make bench`.

Installed by the project's editable install, so tests and scripts import them by name and each
runs as `python -m imgpipe_dev.<module>`; they find the checkout (.bench/, .demo/, .localcloud/,
scripts/requirements-cloud.txt) relative to this directory.
"""
