#!/usr/bin/env python3
"""`make demo`: the main job end to end on the embedded default.

Builds a realistic 2 GiB guest disk (GPT, EFI + ext4 root with 200 MiB of real files,
compressed qcow2 like distribution cloud images) and a small `docker save` archive, starts
a real local Glance, and publishes the disk for every hypervisor profile (plus docker),
verifying each conversion with qemu-img compare and each upload against Glance's hashes.
Running it again shows every image as "unchanged".
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imgpipe_dev import localcloud, sample_disk

ROOT = Path(__file__).resolve().parents[2]

DEMO = ROOT / ".demo"
IMGPIPE = [sys.executable, "-m", "imgpipe.cli"]


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    disk = DEMO / "guest-2g.qcow2"
    if not disk.exists():
        print("building a 2 GiB sample guest disk (EFI + ext4 root, 200 MiB of files)...", flush=True)
        sample_disk.build(disk, size_mib=2048, data_mib=200)
    archive = sample_disk.docker_archive(DEMO / "demo-docker.tar", ["imgpipe/demo:1.0"])
    cloud = localcloud.start(DEMO / "cloud", name="demo")
    print(cloud.summary(), flush=True)
    env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(cloud.clouds_yaml)}
    work = DEMO / "work"
    work.mkdir(exist_ok=True)
    steps = [
        [*IMGPIPE, "inspect", str(disk)],
        [*IMGPIPE, "publish", str(disk), "-p", "all", "--name", "demo-guest", "--cloud", "demo",
         "--verify", "--work-dir", str(work)],
        [*IMGPIPE, "publish", str(archive), "-p", "docker", "--name", "unused", "--cloud", "demo",
         "--work-dir", str(work)],
    ]
    for argv in steps:
        print("$ imgpipe " + " ".join(argv[3:]), flush=True)
        code = subprocess.run(argv, env=env).returncode
        if code:
            return code
    print(f"\nGlance keeps running at {cloud.glance_url} (clouds.yaml: {cloud.clouds_yaml}); "
          "stop it with: make clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())
