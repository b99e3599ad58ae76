"""
``p2psip users``: edit the digest users file a peer reads with ``--users``.

The password comes from ``--password``, or else from the first line of
standard input (prompted for without echo on a terminal), so that it need
not appear in the process list or the shell history.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from p2psip.cli import Subcommands
from p2psip.sip.digest_offer import parse_algorithms
from p2psip.sip.users import UsersFile, UsersFileError


def register(subparsers: Subcommands) -> None:
    users = subparsers.add_parser("users", help="add, change, remove or list SIP digest users")
    commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="add a user or change its password")
    add.add_argument("--file", required=True, help="users file (created with mode 0600 if absent)")
    add.add_argument("--realm", help="digest realm (default: the AOR's domain, the overlay name)")
    add.add_argument(
        "--password",
        help="the password (default: read the first line of standard input)",
    )
    add.add_argument(
        "--offer",
        metavar="ALGORITHMS",
        help="Digest algorithms this user's challenges offer, preferred first, e.g. "
        "SHA-256,MD5 for a user whose phones all speak SHA-256 ('default': the server's "
        "sip-digest-algorithms again; unset: keep the user's current offer)",
    )
    add.add_argument("aor", metavar="AOR", help="address-of-record, e.g. sip:alice@example.org")
    add.set_defaults(run=run_add)

    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("--file", required=True, help="users file")
    remove.add_argument("aor", metavar="AOR", help="address-of-record to remove")
    remove.set_defaults(run=run_remove)

    listing = commands.add_parser("list", help="list users (AOR, realm and algorithms; no secrets)")
    listing.add_argument("--file", required=True, help="users file")
    listing.set_defaults(run=run_list)


def _fail(message: str) -> int:
    sys.stderr.write(f"p2psip users: {message}\n")
    return 1


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def run_add(args: argparse.Namespace) -> int:
    """Add or change one user; exit status 0 on success."""
    offer: tuple[str, ...] | None = None
    if args.offer is not None:
        try:
            offer = () if args.offer.strip().lower() == "default" else parse_algorithms(args.offer)
        except ValueError as e:
            return _fail(f"--offer: {e}")
    password = args.password if args.password is not None else _read_password()
    try:
        users = UsersFile.load(args.file, missing_ok=True)
        existed = users.record(args.aor) is not None
        record = users.set_password(args.aor, password, realm=args.realm, offer=offer)
        users.save()
    except UsersFileError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{args.file}: cannot write: {e.strerror}")
    action = "changed" if existed else "added"
    sys.stdout.write(f"{action} {record.aor} (realm {record.realm}) in {args.file}\n")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove one user; exit status 1 when it was not there."""
    try:
        users = UsersFile.load(args.file)
        if not users.remove(args.aor):
            return _fail(f"{args.file}: no user {args.aor}")
        users.save()
    except UsersFileError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{args.file}: cannot write: {e.strerror}")
    sys.stdout.write(f"removed {args.aor} from {args.file}\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print one line per user: AOR, realm, algorithms held, and the user's offer if set."""
    try:
        users = UsersFile.load(args.file)
    except UsersFileError as e:
        return _fail(str(e))
    for record in users:
        offer = f"\toffer={','.join(record.offer)}" if record.offer else ""
        sys.stdout.write(f"{record.aor}\t{record.realm}\t{','.join(sorted(record.ha1))}{offer}\n")
    return 0
