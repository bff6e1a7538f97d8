"""Real containers of the images users run (``make images``): a Docker engine, or a one-line skip.

``images`` builds both images once per session through ``hack/images/build.sh``, which rebuilds only when
their inputs changed (a hash label on each image), so a warm session pays a fraction of a second.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = ROOT / ".cache" / "docker" / "unavailable"


def _engine_missing() -> str | None:
    """Why no container can run here, or None."""
    if shutil.which("docker") is None:
        return "no docker CLI (make test installs Debian's docker.io where it runs as root)"
    res = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    if res.returncode:
        if UNAVAILABLE.exists():  # hack/docker.sh said why it could not start one
            return UNAVAILABLE.read_text().strip()
        last = (res.stderr.strip().splitlines() or ["docker info failed"])[-1]
        return f"no Docker engine ({last}); `hack/docker.sh` starts one as root"
    return None


@dataclass(frozen=True)
class Images:
    worker: str
    operator: str


@pytest.fixture(scope="session")
def images() -> Images:
    missing = _engine_missing()
    if missing:
        pytest.skip(missing)
    res = subprocess.run([str(ROOT / "hack/images/build.sh")], capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"make images failed:\n{res.stdout}\n{res.stderr}"
    return Images(worker="tide-worker:dev", operator="tide-operator:dev")


class Container:
    """One ``docker run -d`` container, removed afterwards; its log is in failure messages."""

    def __init__(self, image: str, *args: str, run: tuple[str, ...] = ()) -> None:
        self.name = f"tide-test-{uuid.uuid4().hex[:8]}"
        res = subprocess.run(
            ["docker", "run", "-d", "--name", self.name, *args, image, *run],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, f"docker run failed: {res.stderr}"

    def inspect(self) -> dict[str, Any]:
        out = subprocess.run(["docker", "inspect", self.name], capture_output=True, text=True, check=True)
        state: dict[str, Any] = json.loads(out.stdout)[0]
        return state

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        res = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, timeout=60)
        return (res.stdout + res.stderr)[-6000:]

    def stop(self, grace: int = 30) -> tuple[int, float]:
        """``docker stop``: SIGTERM, SIGKILL after ``grace`` s (as a kubelet does); exit code and seconds."""
        start = time.monotonic()
        subprocess.run(["docker", "stop", "-t", str(grace), self.name], capture_output=True, check=True)
        return int(self.inspect()["State"]["ExitCode"]), time.monotonic() - start

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.name], capture_output=True, timeout=60)


@pytest.fixture
def containers() -> Iterator[list[Container]]:
    """Containers a test started, removed when it ends."""
    started: list[Container] = []
    yield started
    for c in started:
        c.remove()


# The QueueConsumer CRDs for the operator container's test, as the operator tests apply them.
from tests.operator.conftest import crds  # noqa: E402, F401
