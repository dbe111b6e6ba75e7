"""On-disk formats read in process or with userspace tools: one module per format."""
