"""
``p2psip users``: edit the digest users file a peer reads with ``--users``.

The password comes from ``--password``, or else from the first line of
standard input (prompted for without echo on a terminal), so that it need
not appear in the process list or the shell history.

A super-node registers only users of its own domain (its overlay-name),
authenticated in that realm, so a user of another domain in its file can
never register.  ``add`` therefore refuses an AOR (or a realm) outside
``--domain`` when it is given, and otherwise warns when the AOR's domain
differs from the other users' in the file.

Info-level logs name users by a short hash (``sip:~2bd806c9@example.org``,
see :mod:`p2psip.sip.blur`); ``list --log-names`` prints each user's log
name, so whoever may read the users file can tell whom a log line means.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from p2psip.cli import Subcommands
from p2psip.sip.blur import blur_aor
from p2psip.sip.users import UsersFile, UsersFileError, canonical_aor, split_aor


def register(subparsers: Subcommands) -> None:
    users = subparsers.add_parser("users", help="add, change, remove or list SIP digest users")
    commands = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = commands.add_parser("add", help="add a user or change its password")
    add.add_argument("--file", required=True, help="users file (created with mode 0600 if absent)")
    add.add_argument("--realm", help="digest realm (default: the AOR's domain, the overlay name)")
    add.add_argument(
        "--domain",
        help="the overlay-name of the super-node that reads this file: an AOR or realm outside "
        "it is refused (without it, an AOR of another domain than the file's other users is "
        "warned about)",
    )
    add.add_argument(
        "--password",
        help="the password (default: read the first line of standard input)",
    )
    add.add_argument("aor", metavar="AOR", help="address-of-record, e.g. sip:alice@example.org")
    add.set_defaults(run=run_add)

    remove = commands.add_parser("remove", help="remove a user")
    remove.add_argument("--file", required=True, help="users file")
    remove.add_argument("aor", metavar="AOR", help="address-of-record to remove")
    remove.set_defaults(run=run_remove)

    listing = commands.add_parser("list", help="list users (AOR, realm and algorithms; no secrets)")
    listing.add_argument("--file", required=True, help="users file")
    listing.add_argument(
        "--log-names",
        action="store_true",
        help="add each user's name in info-level logs (sip:~HASH@domain), to read a log by",
    )
    listing.set_defaults(run=run_list)


def _fail(message: str) -> int:
    sys.stderr.write(f"p2psip users: {message}\n")
    return 1


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password: ")
    return sys.stdin.readline().rstrip("\r\n")


def _domain_problem(args: argparse.Namespace, users: UsersFile) -> tuple[bool, str] | None:
    """
    ``(refuse, message)`` when the AOR (or realm) is not of the domain the
    file serves: refused against ``--domain``, warned about against the
    other users' domains.
    """
    try:
        _scheme, _user, domain = split_aor(args.aor)
    except ValueError:
        return None  # set_password names the bad AOR
    fix = "a super-node registers only users of its overlay-name, in that realm"
    if args.domain:
        served = args.domain.strip().lower()
        if domain != served:
            return True, (
                f"{args.aor} is not in {served}, the domain given with --domain; {fix}: "
                f"write the AOR as sip:USER@{served}, or give the right --domain"
            )
        if args.realm and args.realm != served:
            return True, (
                f"realm {args.realm!r} is not {served}; {fix}: leave --realm out, or give "
                "the right --domain"
            )
        return None
    this = canonical_aor(args.aor)
    others = sorted({split_aor(record.aor)[2] for record in users if record.aor != this})
    if others and domain not in others:
        return False, (
            f"warning: {args.aor} is not in {', '.join(others)}, the domain of the other users "
            f"in {args.file}; {fix}: check the AOR (give --domain to refuse such mistakes)"
        )
    return None


def run_add(args: argparse.Namespace) -> int:
    """Add or change one user; exit status 0 on success."""
    try:
        users = UsersFile.load(args.file, missing_ok=True)
    except UsersFileError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"{args.file}: cannot read: {e.strerror}")
    problem = _domain_problem(args, users)
    if problem is not None:
        refuse, message = problem
        if refuse:
            return _fail(message)
        sys.stderr.write(f"p2psip users: {message}\n")
    password = args.password if args.password is not None else _read_password()
    try:
        existed = users.record(args.aor) is not None
        record = users.set_password(args.aor, password, realm=args.realm)
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
    """Print one line per user: AOR, realm, algorithms."""
    try:
        users = UsersFile.load(args.file)
    except UsersFileError as e:
        return _fail(str(e))
    for record in users:
        line = f"{record.aor}\t{record.realm}\t{','.join(sorted(record.ha1))}"
        if args.log_names:
            line += f"\t{blur_aor(record.aor)}"
        sys.stdout.write(line + "\n")
    return 0
