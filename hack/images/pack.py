"""Slim a venv for the operator image (its build stage): strip, trim and pack its packages.

The operator's dependencies are mostly Python source and bytecode that compress 5-10x (docs/images.md).
In order:
  - strip the debug symbols of compiled extensions (wheels ship them; ``strip`` runs in the build stage);
  - remove build leftovers: Cython/C sources and headers, type stubs, the packages' own test modules;
  - pack each pure-Python package into one zip on the import path, with unchecked bytecode (a read-only
    filesystem can cache none, and nothing compiles at start) and its source, so tracebacks keep their
    lines.
Packages with compiled extensions stay on disk (extensions cannot load from a zip), and so do those that
hand out paths to their data files (certifi's CA bundle, tzdata's zone files).

Usage: python3 pack.py SITE_PACKAGES ZIP
"""

from __future__ import annotations

import argparse
import py_compile
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

KEEP_ON_DISK = {"certifi", "tzdata", "_distutils_hack", "pip", "setuptools", "pkg_resources"}
LEFTOVERS = {".pyx", ".pxd", ".pxi", ".c", ".h", ".pyi"}


def is_leftover(path: Path) -> bool:
    return path.suffix in LEFTOVERS or path.name.endswith("_test.py") or path.name == "conftest.py"


def packable(entry: Path) -> bool:
    if entry.name.endswith((".dist-info", ".pth", ".so")) or entry.name == "__pycache__":
        return False
    if entry.is_file():
        return entry.suffix == ".py"
    return (
        entry.name not in KEEP_ON_DISK and not any(entry.rglob("*.so")) and (entry / "__init__.py").exists()
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("site_packages", type=Path)
    parser.add_argument("zip", type=Path)
    args = parser.parse_args()
    site: Path = args.site_packages
    extensions = [str(p) for p in site.rglob("*.so")]
    if extensions:
        subprocess.run(["strip", "--strip-unneeded", *extensions], check=True)
    for path in list(site.rglob("*")):
        if path.is_file() and ".dist-info" not in path.parent.name and is_leftover(path):
            path.unlink()
    tmp = Path(tempfile.mkdtemp())
    packed = 0
    with zipfile.ZipFile(args.zip, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for entry in sorted(site.iterdir()):
            if not packable(entry):
                continue
            files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
            for path in files:
                if "__pycache__" in path.parts or path.suffix == ".pyc":
                    continue
                rel = path.relative_to(site).as_posix()
                zf.write(path, rel)
                if path.suffix == ".py":
                    pyc = py_compile.compile(
                        str(path),
                        cfile=str(tmp / "module.pyc"),
                        dfile=f"{args.zip}/{rel}",
                        doraise=True,
                        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                    )
                    assert pyc is not None  # doraise: a failure raises
                    zf.write(pyc, rel + "c")
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            packed += 1
    shutil.rmtree(tmp)
    shutil.rmtree(site / "__pycache__", ignore_errors=True)
    # on the import path right after site-packages (site.py reads .pth files)
    (site / "tide-packed.pth").write_text(f"{args.zip}\n")
    print(f"packed {packed} packages into {args.zip} ({args.zip.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
