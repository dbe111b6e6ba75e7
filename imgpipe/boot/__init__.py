"""Boot-check: a converted output booted under QEMU as its target would boot it; reads no guest."""
