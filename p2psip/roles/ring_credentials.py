"""
What a ring role proves itself with and whom it believes, read from its
data directory before it is built.

Three cases, decided by :class:`~p2psip.roles.security_options.SecurityConfig`:

* **Bootstrap (the default for it).**  It runs the overlay CA: the key and
  root in ``--ca-key``/``--ca-cert``, else ``ca-key.pem``/``ca-cert.pem``
  in its data directory, made there on first start by the bootstrap that
  founds the ring (one that joins others must be given a copy, or it would
  be a CA of a different overlay).  Its own node certificate comes from
  that CA; a key without a certificate the CA accepts (a self-signed one
  left from an ``--insecure`` run, an expired one) gets a new certificate
  for the same key.
* **Peer (the default).**  It trusts the root in ``--overlay-root`` or
  ``overlay-root.pem`` and needs ``node-key.pem`` with a ``node-cert.pem``
  that root accepts for this overlay.  Without them it refuses to start
  with the fix (``p2psip enrol ...`` or ``--insecure``), or, given
  ``--enrol-url`` and friends, it enrols on start
  (:class:`EnrolmentNeeded`).
* **``--insecure``.**  Self-signed certificates and
  :class:`~p2psip.overlay.certificates.SelfSignedTrust`, as before
  enrolment existed; an enrolled certificate in the data directory is an
  error rather than something silently set aside.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.python import usage

from p2psip.enrolment.authority import (
    CA_CERTIFICATE_FILE_NAME,
    CA_KEY_FILE_NAME,
    AuthorityError,
    OverlayAuthority,
    random_node_id,
)
from p2psip.enrolment.fingerprints import matches_fingerprint, root_fingerprint
from p2psip.enrolment.node_files import (
    NodeFileError,
    certificate_path,
    key_path,
    load_key,
    read_root,
    root_path,
)
from p2psip.overlay.certificates import (
    CertificateRefused,
    OverlayRootTrust,
    SelfSignedTrust,
    TrustPolicy,
    claims,
)
from p2psip.overlay.identity import IdentityError, NodeIdentity
from p2psip.overlay.parameters import OverlayConfig
from p2psip.roles.security_options import SecurityConfig
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger

log = Logger(namespace="p2psip.roles.ring_credentials")


class NodeRoleConfig(Protocol):
    """
    What credentials are read from: the ring roles' :class:`~p2psip.roles.ring_options.RingRoleConfig`
    and the client's :class:`~p2psip.roles.client_options.ClientConfig` both have it.
    """

    @property
    def data_dir(self) -> Path: ...

    @property
    def security(self) -> SecurityConfig: ...

    @property
    def overlay(self) -> OverlayConfig: ...

    @property
    def found_ring(self) -> bool: ...


class EnrolmentNeeded(Exception):
    """This peer has no usable certificate yet and was told how to enrol; ``str`` says why."""


@frozen
class RingCredentials:
    """The node's identity, the trust policy its certificate cache applies, and the CA it runs."""

    identity: NodeIdentity
    trust: TrustPolicy
    authority: OverlayAuthority | None = None


def _fix(config: NodeRoleConfig) -> str:
    directory = config.data_dir
    return (
        f"enrol this node first: `p2psip enrol --data-dir {directory} --url "
        "https://BOOTSTRAP:8443/enrol --account NAME --ca-fingerprint sha256:HEX` (the "
        "bootstrap logs its URL and fingerprint; `p2psip ca fingerprint` prints the latter), or "
        "give --enrol-url, --enrol-user, --enrol-password-file and --ca-fingerprint to enrol on "
        "start; for a development ring without a CA, start every node with --insecure"
    )


def load_credentials(config: NodeRoleConfig, now: Callable[[], float]) -> RingCredentials:
    """
    The role's credentials from its data directory (and, on first start, made there).

    :raises usage.UsageError: with the file and the fix.
    :raises EnrolmentNeeded: a peer told to enrol on start that has no
        usable certificate yet.
    """
    security = config.security
    if security.insecure:
        return _insecure(config)
    if security.authority is not None:
        return _bootstrap(config, now)
    return _enrolled_peer(config, now)


def _insecure(config: NodeRoleConfig) -> RingCredentials:
    try:
        identity = NodeIdentity.load_or_create(config.data_dir)
    except IdentityError as error:
        raise usage.UsageError(str(error)) from None
    node_ids, _ = claims(x509.load_der_x509_certificate(identity.certificate_der))
    if node_ids:
        raise usage.UsageError(
            f"{certificate_path(config.data_dir)} is an enrolled certificate, but --insecure rings "
            "use self-signed ones: start without --insecure to use it, or give this "
            "development node another --data-dir"
        )
    return RingCredentials(identity, SelfSignedTrust())


def _load_authority(config: NodeRoleConfig, now: Callable[[], float]) -> OverlayAuthority:
    authority_config = config.security.authority
    assert authority_config is not None
    name = config.overlay.overlay_name
    try:
        if authority_config.ca_key is not None and authority_config.ca_cert is not None:
            return OverlayAuthority.load(authority_config.ca_key, authority_config.ca_cert, name)
        key_file = config.data_dir / CA_KEY_FILE_NAME
        if not config.found_ring and not key_file.exists():
            raise usage.UsageError(
                "this bootstrap joins a ring (--bootstrap) but holds no CA: every bootstrap of an "
                f"overlay runs the same CA, so copy {CA_KEY_FILE_NAME} and "
                f"{CA_CERTIFICATE_FILE_NAME} from the first bootstrap's data dir into "
                f"{config.data_dir} (or give --ca-key and --ca-cert), or run this node as a peer"
            )
        authority, created = OverlayAuthority.load_or_create(config.data_dir, name, now())
    except AuthorityError as error:
        raise usage.UsageError(f"the overlay CA: {error}") from None
    if created:
        log.info(
            "made the CA of overlay {overlay} in {directory}; its fingerprint, which peers pin "
            "with --ca-fingerprint, is {fingerprint}",
            overlay=name,
            directory=str(config.data_dir),
            fingerprint=root_fingerprint(authority.root_der),
        )
    return authority


def _bootstrap(config: NodeRoleConfig, now: Callable[[], float]) -> RingCredentials:
    authority = _load_authority(config, now)
    trust = authority.trust(now)
    identity = _usable_identity(config, trust)
    if identity is None:
        identity = _issue_own_certificate(config, authority, now)
    return RingCredentials(identity, trust, authority)


def _issue_own_certificate(
    config: NodeRoleConfig, authority: OverlayAuthority, now: Callable[[], float]
) -> NodeIdentity:
    """A node certificate from the bootstrap's own CA, for its key (made if absent)."""
    try:
        key = load_key(config.data_dir)
    except NodeFileError as error:
        raise usage.UsageError(str(error)) from None
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    certificate = authority.issue(
        key.public_key(), node_id=random_node_id(), user_name=None, now=now()
    )
    identity = NodeIdentity(key, certificate)
    try:
        identity.save(config.data_dir)
    except IdentityError as error:
        raise usage.UsageError(str(error)) from None
    log.info(
        "the overlay CA issued this bootstrap a node certificate: node {node_id}",
        node_id=id_hex(identity.node_id),
    )
    return identity


def _usable_identity(config: NodeRoleConfig, trust: TrustPolicy) -> NodeIdentity | None:
    """
    The identity in the data directory if ``trust`` accepts its certificate, else None.

    An unusable certificate is named in the log with the reason, so that an
    operator sees why the node asks for (or makes) a new one.
    """
    if not key_path(config.data_dir).exists() or not certificate_path(config.data_dir).exists():
        return None
    try:
        identity = NodeIdentity.load(config.data_dir)
    except IdentityError as error:
        raise usage.UsageError(str(error)) from None
    try:
        trust.identify(x509.load_der_x509_certificate(identity.certificate_der))
    except CertificateRefused as why:
        log.warn(
            "{path} is not usable in overlay {overlay}: {why}",
            path=str(certificate_path(config.data_dir)),
            overlay=config.overlay.overlay_name,
            why=str(why),
        )
        return None
    return identity


def overlay_root(config: NodeRoleConfig) -> tuple[bytes, Path] | None:
    """The peer's trusted root and the file it came from, or None when it has none yet."""
    path = config.security.overlay_root or root_path(config.data_dir)
    if config.security.overlay_root is None and not path.exists():
        return None
    try:
        return read_root(path), path
    except NodeFileError as error:
        raise usage.UsageError(str(error)) from None


def _enrolled_peer(config: NodeRoleConfig, now: Callable[[], float]) -> RingCredentials:
    found = overlay_root(config)
    enrol = config.security.enrol
    if found is not None and enrol is not None and enrol.ca_fingerprint is not None:
        root, path = found
        if not matches_fingerprint(root, enrol.ca_fingerprint):
            raise usage.UsageError(
                f"{path} has fingerprint {root_fingerprint(root)}, not the --ca-fingerprint "
                "given: this data dir belongs to another overlay; use another --data-dir or fix "
                "the fingerprint"
            )
    identity = None
    trust: OverlayRootTrust | None = None
    if found is not None:
        try:
            trust = OverlayRootTrust(found[0], config.overlay.overlay_name, now)
        except CertificateRefused as error:
            raise usage.UsageError(f"{found[1]}: {error}") from None
        identity = _usable_identity(config, trust)
    if identity is not None and trust is not None:
        return RingCredentials(identity, trust)
    why = (
        f"no overlay root ({root_path(config.data_dir)} or --overlay-root)"
        if found is None
        else f"no node certificate from that root in {config.data_dir}"
    )
    if enrol is not None:
        raise EnrolmentNeeded(f"{why}; enrolling at {enrol.url} as {enrol.account}")
    raise usage.UsageError(f"this node has {why}, so it cannot join a secure ring: {_fix(config)}")
