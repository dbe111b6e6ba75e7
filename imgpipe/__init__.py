"""imgpipe: one source image, every hypervisor's format, published to Glance."""

__version__ = "0.1.0"
