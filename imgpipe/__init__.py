"""imgpipe: one source image, every hypervisor's format, published to Glance."""

from imgpipe.imports import defer_package_init

# openstack/__init__ imports openstack.connection and every service proxy for
# openstack.connect(), which imgpipe never calls (0.1-0.2 s); oslo_utils.imageutils/__init__
# imports QemuImgInfo and with it oslo strutils, which compiles hundreds of password regexes
# (60-90 ms), where imgpipe needs only format_inspector. Both only need openstack.config and
# oslo_utils.imageutils.format_inspector.
defer_package_init("openstack")
defer_package_init("oslo_utils.imageutils")

__version__ = "0.1.0"
