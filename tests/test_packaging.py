"""The product ships without the test stack, and every package declares what it imports.

The wheel users install (and both images build from) holds ``tide_worker`` and ``tide_operator`` only;
``tide_local`` is a distribution of its own (``hack/pyproject.toml``). Each third-party import of a package
must be declared by the distribution that ships it: the worker's in the base dependencies, the operator's
in the ``operator`` extra, the local stack's in ``hack/pyproject.toml``.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "tide_worker": ROOT / "worker-image" / "tide_worker",
    "tide_operator": ROOT / "operator" / "tide_operator",
    "tide_local": ROOT / "hack" / "tide_local",
}
OURS = set(PACKAGES)


def _declared(pyproject: Path, extra: str | None = None) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def _imports(package: Path) -> set[str]:
    """Top-level modules the package imports, lazily imported ones included."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in OURS and m != "__future__"}


def _distributions(modules: set[str]) -> set[str]:
    dists = packages_distributions()
    missing = {m for m in modules if m not in dists}
    assert not missing, f"modules with no installed distribution: {missing}"
    return {d.lower().replace("_", "-") for m in modules for d in dists[m]}


@pytest.mark.parametrize(
    ("package", "pyproject", "extra"),
    [
        ("tide_worker", ROOT / "pyproject.toml", None),
        ("tide_operator", ROOT / "pyproject.toml", "operator"),
        ("tide_local", ROOT / "hack" / "pyproject.toml", None),
    ],
)
def test_every_import_is_declared_where_it_is_used(package: str, pyproject: Path, extra: str | None) -> None:
    used = _distributions(_imports(PACKAGES[package]))
    declared = _declared(pyproject, extra)
    assert used <= declared, (
        f"{package} imports {sorted(used - declared)} without declaring them in {pyproject}"
    )


def test_the_worker_needs_nothing_of_the_operator_or_the_test_stack() -> None:
    assert not (_distributions(_imports(PACKAGES["tide_worker"])) & {"kopf", "kubernetes", "pyyaml"})


def test_the_product_wheel_holds_no_test_stack(tmp_path: Path) -> None:
    # from a copy of the tree: setuptools would reuse a stale build/ of the checkout
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", ".cache", "build", "*.egg-info")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("tide-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("tide-")} == {"tide_worker", "tide_operator"}
    assert "tide_worker/lua/fetch_batch.lua" in names and "tide_operator/lua/list_backlog.lua" in names
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist")
    ]
    assert not [r for r in requires if "pyyaml" in r.lower() and "extra ==" not in r], requires
