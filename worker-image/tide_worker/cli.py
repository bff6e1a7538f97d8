"""The `tide` command line: `tide worker`, `tide enqueue`, `tide stats`, `tide dlq ...`.

Each subcommand lives in its own module, which registers its parser here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


if __name__ == "__main__":
    sys.exit(main())
