"""
``p2psip mediator secret CLIENT-ID``: the secret one client of a mediator
logs in with.

A mediator checks each client ID against a secret of that ID's own: its
line in the secrets file, or else one derived from the mediator's shared
secret (``p2psip.nat.control_auth``).  This command reads the mediator's
own configuration (``--config``, default ``/etc/p2psip/mediator.ini``, and
the ``secrets`` file of its data directory) exactly as the role does and
prints that ID's secret, so the operator can hand each client (a ring
node's ``mediator-secret-file``, ``p2psip nat --secret``) its own secret
and never the shared one.  Run it on the mediator host, as a user who may
read those files.
"""

from __future__ import annotations

import argparse
import os
import sys

from twisted.python import usage

from p2psip.cli import Subcommands
from p2psip.nat.control_auth import valid_client_id

DEFAULT_CONFIG = "/etc/p2psip/mediator.ini"


def register(subparsers: Subcommands) -> None:
    mediator = subparsers.add_parser("mediator", help="a mediator's per-client secrets")
    commands = mediator.add_subparsers(dest="mediator_command", metavar="ACTION", required=True)
    secret = commands.add_parser(
        "secret",
        help="print the secret a client ID logs in with (run on the mediator host)",
    )
    secret.add_argument(
        "--config",
        metavar="FILE",
        help=f"the mediator's configuration (default: {DEFAULT_CONFIG} when it exists)",
    )
    secret.add_argument(
        "--mediator-data-dir",
        metavar="DIR",
        help="the mediator's data-dir, whose 'secrets' file is read (default: as --config says)",
    )
    secret.add_argument(
        "client_id",
        metavar="CLIENT-ID",
        help="the client's ID: a ring node's Node-ID in hex (p2psip status shows it as node_id)",
    )
    secret.set_defaults(run=run_secret)


def _fail(message: str) -> int:
    sys.stderr.write(f"p2psip mediator: {message}\n")
    return 1


def run_secret(args: argparse.Namespace) -> int:
    """Print the secret of ``args.client_id``; exit status 1 when the mediator has none for it."""
    from p2psip.roles.mediator import Options

    if not valid_client_id(args.client_id):
        return _fail(f"{args.client_id!r} is not a client ID (1 to 128 characters, no spaces)")
    argv: list[str] = []
    config = args.config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if config is not None:
        argv += ["--config", config]
    if args.mediator_data_dir:
        argv += ["--data-dir", args.mediator_data_dir]
    options = Options()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        return _fail(f"{e} (give --config with the mediator's configuration file)")
    secret = options.config.secrets.secret_for(args.client_id)
    if secret is None:
        return _fail(f"the mediator has no secret for {args.client_id}")
    sys.stdout.write(secret.decode("utf-8", "replace") + "\n")
    return 0
