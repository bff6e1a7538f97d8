"""Run the ops commands in-process (argparse + ops_cli.register) or as a subprocess.

`tide_worker.cli` also imports the worker's subcommands; building the parser from ops_cli alone keeps
these tests about ops_cli.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from tide_worker import ops_cli

# A subprocess entry point equivalent to `tide`, for checking real stderr and exit codes.
SCRIPT = (
    "import argparse, sys\n"
    "from tide_worker import ops_cli\n"
    "p = argparse.ArgumentParser(prog='tide')\n"
    "s = p.add_subparsers(dest='command', required=True)\n"
    "ops_cli.register(s)\n"
    "a = p.parse_args(sys.argv[1:])\n"
    "sys.exit(a.func(a))\n"
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tide")
    sub = p.add_subparsers(dest="command", required=True)
    ops_cli.register(sub)
    return p


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    code: int = args.func(args)
    return code


def run_proc(
    argv: Sequence[str], *, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIDE_REDIS_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
