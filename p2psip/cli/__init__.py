"""
The ``p2psip`` command-line tool.

Each group of subcommands lives in its own module under ``p2psip.cli`` and
exposes ``register(subparsers)``; this module only dispatches, so one broken
group cannot hide the others.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import TypeAlias

#: What each command module's ``register`` is given: the ``p2psip`` parser's
#: subcommands, to which it adds its own (``subparsers.add_parser(...)``).
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "p2psip.cli.admin",
    "p2psip.cli.phone",
    "p2psip.cli.users",
    "p2psip.cli.accounts",
    "p2psip.cli.enrol",
    "p2psip.cli.nat",
    "p2psip.cli.mediator",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2psip",
        description="Operate p2psip roles: overlay admin, users, enrolment, NAT diagnostics, mediator secrets.",
    )
    parser.add_argument(
        "--api",
        metavar="URL",
        default=os.environ.get("P2PSIP_API", "http://127.0.0.1:8084"),
        help="admin API of the role to talk to: its --http address "
        "(default: $P2PSIP_API or http://127.0.0.1:8084)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=os.environ.get("P2PSIP_DATA_DIR"),
        help="data-dir of that role, where it keeps its admin token (default: $P2PSIP_DATA_DIR, "
        "else /var/lib/p2psip/bootstrap for port 8084, /var/lib/p2psip/peer for 8085 and "
        "/var/lib/p2psip/client for 8088)",
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the role's admin token file (default: admin-token in --data-dir)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
