"""Conversion: source image -> the file each target profile uploads."""
