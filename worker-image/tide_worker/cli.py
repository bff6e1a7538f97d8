"""The `tide` command line: `tide worker`, `tide enqueue`, `tide stats`, `tide dlq ...`.

Each subcommand lives in its own module, which registers its parser here.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from typing import NoReturn

from tide_worker import __version__


def build_parser() -> argparse.ArgumentParser:
    from tide_worker import ops_cli, worker_cli

    parser = argparse.ArgumentParser(prog="tide", description="Reliable Redis queue workers and their tools.")
    parser.add_argument("--version", action="version", version=f"tide {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    worker_cli.register(sub)
    ops_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Each register() sets `func` on its subparser: it returns the process exit code.
    code: int = args.func(args)
    return code


def exit_with(code: int) -> NoReturn:
    """End the process with ``code``. The interpreter's last collection would walk every object the imports
    made: 60-90 ms of an idle worker's 80-100 ms from SIGTERM to exit, which every scale-down waits for.
    Frozen, they are skipped; their cycles go with the process. For processes only: a caller in a process
    that goes on (the tests call ``main``) would freeze its heap."""
    gc.freeze()
    sys.exit(code)


def run() -> NoReturn:
    """The ``tide`` console script."""
    exit_with(main())


if __name__ == "__main__":
    run()
