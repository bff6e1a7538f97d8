"""What the images hold: the product alone, as uid 10001, within 150 MB each."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.containers.conftest import Images

pytestmark = pytest.mark.slow  # the first session builds the images

LIMIT = 150e6  # bytes, as `docker images` counts them
# no Kubernetes client library either: the operator speaks HTTP (kube.py) and logs in with kopf
ABSENT = [
    "tide_local",
    "pip",
    "setuptools",
    "pytest",
    "hypothesis",
    "mypy",
    "ruff",
    "trustme",
    "kubernetes",
    "pykube",
]
NO_TOOLS = ["gcc", "cc", "make", "strip", "pip", "pip3", "git"]


@pytest.mark.parametrize("which", ["worker", "operator"])
def test_image_holds_only_the_product(images: Images, which: str) -> None:
    image = getattr(images, which)
    info = json.loads(
        subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=True).stdout
    )[0]
    assert info["Size"] <= LIMIT, f"{image} is {info['Size'] / 1e6:.1f} MB"
    assert info["Config"]["User"] == "10001:10001"
    probe = (
        "import importlib.util as u, shutil, sys\n"
        f"present = [m for m in {ABSENT!r} if u.find_spec(m)]\n"
        f"tools = [t for t in {NO_TOOLS!r} if shutil.which(t)]\n"
        "import tide_worker, tide_operator\n"
        "print(sys.version_info[:2], present, tools)\n"
    )
    res = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--user", "10001:10001", "--entrypoint", "python3", image,
         "-c", probe],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(3, 11) [] []"


def test_operator_image_has_the_time_zones_schedules_name(images: Images) -> None:
    """spec.scaling.schedules names IANA zones: zoneinfo finds them in the image (Debian's tzdata)."""
    probe = (
        "from tide_operator.schedule import parse_schedule\n"
        "for tz in ('Europe/Berlin', 'America/New_York', 'Asia/Kolkata', 'UTC'):\n"
        "    parse_schedule({'cron': '0 9 * * *', 'timezone': tz, 'durationSeconds': 60, 'minReplicas': 1}, 0)\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--user", "10001:10001", "--entrypoint", "python3",
         images.operator, "-c", probe],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
