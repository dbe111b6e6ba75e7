"""Read an untrusted guest disk without mounting or running it: what it needs to boot."""
