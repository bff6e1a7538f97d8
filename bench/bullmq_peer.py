"""BullMQ (Node.js) for the benchmarks: installed from the npm registry with the machine's node and npm
into ~/.cache/tide-bench/bullmq-<hash of bench/bullmq/package.json>, once (idempotent: a stamp file
marks a finished install; a changed package.json gets a new folder)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SRC = Path(__file__).resolve().parent / "bullmq"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tide-bench"


class BullMQMissing(RuntimeError):
    """node or npm is not installed, or npm could not install BullMQ; the text says which."""


def ensure() -> Path:
    """The folder holding node_modules/bullmq and the scripts (copied next to it); installs if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        raise BullMQMissing("BullMQ needs node and npm on PATH (apt-get install nodejs npm)")
    manifest = (SRC / "package.json").read_bytes()
    home = CACHE / f"bullmq-{hashlib.sha256(manifest).hexdigest()[:12]}"
    stamp = home / ".installed"
    if not stamp.exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "package.json").write_bytes(manifest)
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=home,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise BullMQMissing(f"npm install in {home} failed: {proc.stderr.strip()[-500:]}")
        stamp.touch()
    for script in SRC.glob("*.js"):  # the scripts are the repo's: refreshed every run
        shutil.copyfile(script, home / script.name)
    return home


def command(script: str, *args: str) -> list[str]:
    return [shutil.which("node") or "node", str(ensure() / script), *args]
