"""Catalog: keep a multi-cloud image catalog current."""
