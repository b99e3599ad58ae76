"""
``p2psip accounts``: edit the enrolment accounts file the bootstrap checks.

Who may ask the overlay CA for what (:mod:`p2psip.enrolment.accounts`):
``--peer`` lets the account enrol new super-nodes, ``--user`` lets it get
user certificates bound to a super-node.  The file lives in the
bootstrap's data directory; the running bootstrap re-reads it.  The
password comes from ``--password-file`` or a prompt (standard input when it
is not a terminal), never from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from p2psip.cli import Subcommands
from p2psip.enrolment.accounts import AccountsFile, AccountsFileError, Grant, accounts_path

#: The bootstrap's data directory when neither --file nor --data-dir says otherwise.
DEFAULT_BOOTSTRAP_DATA_DIR = "/var/lib/p2psip/bootstrap"


def register(subparsers: Subcommands) -> None:
    accounts = subparsers.add_parser(
        "accounts", help="add, change, remove or list enrolment accounts (on the bootstrap)"
    )
    commands = accounts.add_subparsers(dest="accounts_command", metavar="ACTION", required=True)
    file_help = (
        "accounts file (default: enrolment-accounts in the --data-dir given to p2psip, else in "
        f"{DEFAULT_BOOTSTRAP_DATA_DIR})"
    )

    add = commands.add_parser("add", help="add an account or change its password and grants")
    add.add_argument("--file", help=file_help)
    add.add_argument(
        "--peer", action="store_true", help="the account may enrol super-nodes (node certificates)"
    )
    add.add_argument(
        "--user",
        action="store_true",
        help="the account may get user certificates bound to a super-node's Node-ID",
    )
    add.add_argument(
        "--password-file",
        help="file whose first line is the password (default: prompt, or standard input)",
    )
    add.add_argument("name", metavar="NAME", help="account name, user@domain")
    add.set_defaults(run=run_add)

    remove = commands.add_parser("remove", help="remove an account")
    remove.add_argument("--file", help=file_help)
    remove.add_argument("name", metavar="NAME", help="account name")
    remove.set_defaults(run=run_remove)

    listing = commands.add_parser("list", help="list accounts and their grants (no secrets)")
    listing.add_argument("--file", help=file_help)
    listing.set_defaults(run=run_list)


def _fail(message: str) -> int:
    sys.stderr.write(f"p2psip accounts: {message}\n")
    return 1


def _path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    return accounts_path(args.data_dir or DEFAULT_BOOTSTRAP_DATA_DIR)


def read_password(password_file: str | None, confirm: bool) -> str:
    """The password from a file's first line, a prompt (twice when ``confirm``), or standard input."""
    if password_file:
        with open(password_file, encoding="utf-8") as stream:
            return stream.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password again: ") != password:
            raise ValueError("the two passwords differ")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def run_add(args: argparse.Namespace) -> int:
    """Add or change one account; exit status 0 on success."""
    grants = [
        grant for grant, wanted in ((Grant.PEER, args.peer), (Grant.USER, args.user)) if wanted
    ]
    if not grants:
        return _fail("say what the account may get: --peer, --user or both")
    path = _path(args)
    try:
        password = read_password(args.password_file, confirm=True)
    except OSError as e:
        return _fail(f"cannot read the password file {args.password_file}: {e.strerror}")
    except ValueError as e:
        return _fail(str(e))
    try:
        accounts = AccountsFile.load(path, missing_ok=True)
        existed = accounts.get(args.name) is not None
        account = accounts.set_account(args.name, password, grants)
        accounts.save()
    except AccountsFileError as e:
        return _fail(str(e))
    action = "changed" if existed else "added"
    granted = " and ".join(grant.value for grant in Grant if grant in account.grants)
    sys.stdout.write(f"{action} {account.name} (may get: {granted}) in {path}\n")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    """Remove one account; exit status 1 when it was not there."""
    path = _path(args)
    try:
        accounts = AccountsFile.load(path)
        if not accounts.remove(args.name):
            return _fail(f"{path}: no account {args.name}")
        accounts.save()
    except AccountsFileError as e:
        return _fail(str(e))
    sys.stdout.write(f"removed {args.name} from {path}\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Print one line per account: name and grants."""
    try:
        accounts = AccountsFile.load(_path(args))
    except AccountsFileError as e:
        return _fail(str(e))
    for account in accounts:
        grants = ",".join(grant.value for grant in Grant if grant in account.grants)
        sys.stdout.write(f"{account.name}\t{grants}\n")
    return 0
