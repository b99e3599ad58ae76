"""
``p2psip enrol`` and ``p2psip ca fingerprint``: certificates from the overlay CA.

``p2psip enrol --url URL --account NAME --ca-fingerprint sha256:HEX``
    Enrols this super-node (RFC 6940 s11.3): makes ``node-key.pem`` in the
    data directory if there is none, asks the enrolment server for a
    certificate (the CA chooses the Node-ID) and writes ``node-cert.pem``,
    the overlay root as ``overlay-root.pem`` and the signed configuration
    document as ``overlay-config.xml``.
``p2psip enrol --url URL --user alice@example.org``
    Gets a user certificate for alice bound to this super-node's Node-ID
    (what it needs to write alice's SIP registrations) into
    ``user-certs/``; the CSR is made with the super-node's own key, which
    never leaves the data directory.

The CA is pinned, never trusted on first use: ``--ca-fingerprint`` (as
the bootstrap logs it and ``p2psip ca fingerprint`` prints it), or
``--ca-cert FILE``, or the ``overlay-root.pem`` an earlier enrolment left.
Passwords come from ``--password-file`` or a prompt (standard input when
it is not a terminal), never from the command line.

``p2psip ca fingerprint`` prints the fingerprint of the CA in a
bootstrap's data directory (or of ``--ca-cert FILE``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.internet import defer
from twisted.python.failure import Failure

from p2psip.cli import Subcommands
from p2psip.cli.accounts import read_password
from p2psip.enrolment.authority import CA_CERTIFICATE_FILE_NAME
from p2psip.enrolment.client import (
    EnrolmentFailed,
    EnrolmentUnavailable,
    RootPin,
    enrol_node,
    enrol_user,
)
from p2psip.enrolment.fingerprints import parse_fingerprint, root_fingerprint
from p2psip.enrolment.node_files import (
    NodeFileError,
    certificate_path,
    load_key,
    load_or_make_key,
    read_root,
    root_path,
    save_node_enrolment,
)
from p2psip.enrolment.user_certificates import UserCertificateError, UserCertificates
from p2psip.overlay.certificates import CertificateRefused, OverlayRootTrust, claims
from p2psip.overlay.identity import IdentityError, NodeIdentity
from p2psip.util.ids import id_hex
from p2psip.util.reactor import IRoleReactor, as_role_reactor

DEFAULT_PEER_DATA_DIR = "/var/lib/p2psip/peer"
DEFAULT_BOOTSTRAP_DATA_DIR = "/var/lib/p2psip/bootstrap"


def register(subparsers: Subcommands) -> None:
    enrol = subparsers.add_parser(
        "enrol", help="get this super-node's certificate, or a user's, from the overlay CA"
    )
    enrol.add_argument(
        "--url",
        required=True,
        help="the enrolment server, https://HOST:8443/enrol (the bootstrap logs it)",
    )
    who = enrol.add_mutually_exclusive_group(required=True)
    who.add_argument("--account", help="enrol this super-node under this account (peer grant)")
    who.add_argument(
        "--user", help="get a user certificate for this user@domain, bound to this super-node"
    )
    pin = enrol.add_mutually_exclusive_group()
    pin.add_argument("--ca-fingerprint", help="the CA's fingerprint, sha256:HEX")
    pin.add_argument("--ca-cert", help="the CA's root certificate (PEM)")
    enrol.add_argument(
        "--password-file",
        help="file whose first line is the account's password (default: prompt, or standard input)",
    )
    enrol.add_argument(
        "--data-dir",
        dest="enrol_data_dir",
        metavar="DIR",
        help=f"the super-node's data-dir (default: p2psip's --data-dir, else {DEFAULT_PEER_DATA_DIR})",
    )
    enrol.add_argument("--overlay-name", help="refuse an enrolment server of another overlay")
    enrol.set_defaults(run=run_enrol)

    ca = subparsers.add_parser("ca", help="the overlay CA on a bootstrap")
    commands = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)
    fingerprint = commands.add_parser(
        "fingerprint", help="print the CA's fingerprint, which peers pin with --ca-fingerprint"
    )
    fingerprint.add_argument(
        "--data-dir",
        dest="ca_data_dir",
        metavar="DIR",
        help=f"the bootstrap's data-dir (default: p2psip's --data-dir, else {DEFAULT_BOOTSTRAP_DATA_DIR})",
    )
    fingerprint.add_argument("--ca-cert", help="a root certificate file instead (PEM or DER)")
    fingerprint.set_defaults(run=run_fingerprint)


def _fail(message: str) -> int:
    sys.stderr.write(f"p2psip enrol: {message}\n")
    return 1


def run_fingerprint(args: argparse.Namespace) -> int:
    """Print ``sha256:HEX`` of the CA root."""
    directory = args.ca_data_dir or args.data_dir or DEFAULT_BOOTSTRAP_DATA_DIR
    path = Path(args.ca_cert) if args.ca_cert else Path(directory) / CA_CERTIFICATE_FILE_NAME
    try:
        root = read_root(path)
    except NodeFileError as e:
        sys.stderr.write(f"p2psip ca: {e}\n")
        return 1
    sys.stdout.write(root_fingerprint(root) + "\n")
    return 0


def _pin(args: argparse.Namespace, data_dir: Path) -> RootPin:
    """The pinned CA: --ca-fingerprint, --ca-cert, or the data dir's overlay-root.pem."""
    stored = root_path(data_dir)
    root = None
    if args.ca_cert:
        root = read_root(args.ca_cert)
    elif stored.exists():
        root = read_root(stored)
    fingerprint = parse_fingerprint(args.ca_fingerprint) if args.ca_fingerprint else None
    if root is None and fingerprint is None:
        raise ValueError(
            "the CA must be pinned: give --ca-fingerprint sha256:HEX (printed by `p2psip ca "
            "fingerprint` on the bootstrap) or --ca-cert FILE"
        )
    return RootPin(root_der=root, fingerprint=fingerprint)


def run_enrol(args: argparse.Namespace) -> int:
    """Enrol the super-node, or get a user certificate for it; exit status 0 on success."""
    data_dir = Path(args.enrol_data_dir or args.data_dir or DEFAULT_PEER_DATA_DIR)
    try:
        pin = _pin(args, data_dir)
    except (ValueError, NodeFileError) as e:
        return _fail(str(e))
    try:
        password = read_password(args.password_file, confirm=False)
    except OSError as e:
        return _fail(f"cannot read the password file {args.password_file}: {e.strerror}")
    if not password:
        return _fail("an empty password; give --password-file FILE or type it at the prompt")
    if args.user:
        return _run(lambda reactor: _enrol_user(reactor, args, data_dir, pin, password))
    return _run(lambda reactor: _enrol_node(reactor, args, data_dir, pin, password))


async def _enrol_node(
    reactor: IRoleReactor, args: argparse.Namespace, data_dir: Path, pin: RootPin, password: str
) -> str:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, new = load_or_make_key(data_dir)
    if not new and certificate_path(data_dir).exists() and pin.root_der is not None:
        _refuse_if_enrolled(data_dir, pin.root_der, args.overlay_name, reactor)
    enrolment = await enrol_node(
        reactor,
        enrol_url=args.url,
        pin=pin,
        account=args.account,
        password=password,
        key=key,
        overlay_name=args.overlay_name,
    )
    save_node_enrolment(
        data_dir, key, enrolment.certificate_der, enrolment.root_der, enrolment.document
    )
    return (
        f"enrolled in overlay {enrolment.configuration.instance_name} as node "
        f"{id_hex(enrolment.node_id)} (account {enrolment.user_name}); wrote "
        f"{certificate_path(data_dir)} and {root_path(data_dir)}"
        + ("" if not new else f", and a new key {data_dir / 'node-key.pem'}")
    )


def _refuse_if_enrolled(
    data_dir: Path, root_der: bytes, overlay_name: str | None, reactor: IRoleReactor
) -> None:
    """Enrolling again would change the Node-ID: only when the certificate is unusable."""
    try:
        identity = NodeIdentity.load(data_dir)
        certificate = x509.load_der_x509_certificate(identity.certificate_der)
        issuer_overlay = overlay_name or _overlay_of(certificate)
        if issuer_overlay is None:
            return
        OverlayRootTrust(root_der, issuer_overlay, reactor.seconds).identify(certificate)
    except (IdentityError, CertificateRefused):
        return  # expired, self-signed, another CA's: enrolling again is the cure
    raise EnrolmentFailed(
        f"{certificate_path(data_dir)} already holds a certificate from this CA (node "
        f"{id_hex(identity.node_id)}); enrolling again would give the node a new Node-ID: "
        "remove that file first if that is what you want"
    )


def _overlay_of(certificate: x509.Certificate) -> str | None:
    node_ids, _ = claims(certificate)
    return node_ids[0][1] if node_ids else None


async def _enrol_user(
    reactor: IRoleReactor, args: argparse.Namespace, data_dir: Path, pin: RootPin, password: str
) -> str:
    key = load_key(data_dir)
    if key is None or not certificate_path(data_dir).exists():
        raise EnrolmentFailed(
            f"{data_dir} holds no enrolled super-node (node-key.pem and node-cert.pem): enrol "
            "the super-node first with `p2psip enrol --account NAME ...`"
        )
    try:
        node = NodeIdentity.load(data_dir)
    except IdentityError as e:
        raise EnrolmentFailed(str(e)) from None
    enrolment = await enrol_user(
        reactor,
        enrol_url=args.url,
        pin=pin,
        user=args.user,
        password=password,
        node=node,
        key=key,
        overlay_name=args.overlay_name,
    )
    path = UserCertificates(data_dir).save(args.user, enrolment.certificate_der)
    return (
        f"user certificate for {enrolment.user_name} bound to node {id_hex(enrolment.node_id)} "
        f"written to {path}"
    )


def _run(work: Callable[[IRoleReactor], Coroutine[Any, Any, str]]) -> int:
    """Run ``work`` on the global reactor; print its result, or the reason it failed."""
    from twisted.internet.task import react

    status = [0]

    def report(failure: Failure) -> None:
        status[0] = 1
        if failure.check(
            EnrolmentFailed, EnrolmentUnavailable, NodeFileError, UserCertificateError
        ):
            _fail(failure.getErrorMessage())
        else:
            _fail(f"unexpected error: {failure.getTraceback()}")

    def say(message: str) -> None:
        sys.stdout.write(message + "\n")

    def main(reactor: Any) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(work(as_role_reactor(reactor)))
        return d.addCallback(say).addErrback(report)

    try:
        react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0]
