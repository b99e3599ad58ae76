"""
What an overlay certificate proves, and which certificates a node trusts.

RFC 6940 s11.3 gives every enrolled node a certificate from the overlay's
enrolment server.  Its subjectAltName carries the Node-ID as a URI,
``reload://<32 hex digits>@<overlay name>/``, and the user name as an
rfc822Name (``alice@example.com``).  The CA, not the node, chooses the
Node-ID, so nobody can place themselves next to the resource they want to
attack; the user name is what USER-MATCH and USER-NODE-MATCH compare a
Resource-ID with (RFC 6940 s7.3).

A :class:`TrustPolicy` turns a parsed certificate into the
:class:`CertifiedIdentity` it proves, or refuses it:

* :class:`OverlayRootTrust`: the certificate must be signed by the overlay's
  root, be inside its validity period and name this overlay; the claims come
  from the subjectAltName.  This is the default for every role.
* :class:`SelfSignedTrust`: RFC 6940 s13.4's self-signed mode, only behind
  ``--insecure``.  The Node-ID is derived from the key, so it still cannot be
  chosen cheaply, but a user name in the certificate is the holder's own
  unverified claim.

Sans-IO: the caller passes the time a validity check compares with.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Protocol

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from p2psip.util.ids import id_hex, node_id_from_key

#: The URI scheme of a Node-ID in a certificate (RFC 6940 s11.3).
RELOAD_URI_SCHEME = "reload"

_RELOAD_URI = re.compile(r"^reload://([0-9a-fA-F]{1,32})@([^/]+)/?$")

#: A certificate may name at most this many Node-IDs; RFC 6940 allows
#: several, and a bound keeps hostile certificates cheap to read.
MAX_NODE_IDS_PER_CERTIFICATE = 8


class CertificateRefused(ValueError):
    """A certificate does not prove an identity in this overlay; ``str(error)`` says why."""


@frozen
class CertifiedIdentity:
    """
    What a trusted certificate proves about its holder.

    ``node_ids`` holds every Node-ID the certificate names (the first is the
    one the holder uses); ``user_name`` is the rfc822Name, or None when the
    certificate carries none.
    """

    node_ids: tuple[int, ...]
    user_name: str | None

    @property
    def node_id(self) -> int:
        return self.node_ids[0]


def reload_uri(node_id: int, overlay_name: str) -> str:
    """The subjectAltName URI that names ``node_id`` in ``overlay_name``."""
    return f"{RELOAD_URI_SCHEME}://{id_hex(node_id)}@{overlay_name}/"


def public_key_der(certificate: x509.Certificate) -> bytes:
    """The DER SubjectPublicKeyInfo of ``certificate``'s key."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def claims(certificate: x509.Certificate) -> tuple[list[tuple[int, str]], str | None]:
    """
    The (Node-ID, overlay) pairs and the user name in a subjectAltName.

    Anything that is not a well-formed ``reload://`` URI is ignored; a
    certificate with two different user names is refused, since a policy
    could not tell which one it proves.
    """
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return [], None
    except Exception as e:  # hostile extensions raise the parser's own errors
        raise CertificateRefused(f"unreadable subjectAltName: {type(e).__name__}") from e
    names = extension.value
    node_ids: list[tuple[int, str]] = []
    for uri in names.get_values_for_type(x509.UniformResourceIdentifier):
        match = _RELOAD_URI.match(uri)
        if match is not None:
            node_ids.append((int(match.group(1), 16), match.group(2)))
    if len(node_ids) > MAX_NODE_IDS_PER_CERTIFICATE:
        raise CertificateRefused(
            f"certificate names {len(node_ids)} Node-IDs, more than {MAX_NODE_IDS_PER_CERTIFICATE}"
        )
    users = set(names.get_values_for_type(x509.RFC822Name))
    if len(users) > 1:
        raise CertificateRefused("certificate names more than one user")
    return node_ids, (users.pop() if users else None)


class TrustPolicy(Protocol):
    """Decides what a certificate proves; raises :class:`CertificateRefused` otherwise."""

    #: True when certificates need not come from the overlay's CA (``--insecure``).
    insecure: bool

    def identify(self, certificate: x509.Certificate) -> CertifiedIdentity:
        """The identity ``certificate`` proves, or :class:`CertificateRefused`."""
        ...


class SelfSignedTrust:
    """
    RFC 6940 s13.4 self-signed mode: the Node-ID is the hash of the key.

    A ``reload://`` URI in the certificate is ignored (the key decides), and
    the user name is the holder's unverified claim.  Only for ``--insecure``
    development rings.
    """

    insecure = True

    def identify(self, certificate: x509.Certificate) -> CertifiedIdentity:
        _, user_name = claims(certificate)
        return CertifiedIdentity((node_id_from_key(public_key_der(certificate)),), user_name)


class OverlayRootTrust:
    """
    Certificates issued by the overlay's root for this overlay, in their validity period.

    ``now`` gives the time (seconds since the epoch) the validity period is
    compared with; roles pass their reactor's clock.  The root itself is a
    CA, not a node: it proves no identity.
    """

    insecure = False

    def __init__(self, root_der: bytes, overlay_name: str, now: Callable[[], float]) -> None:
        self.root_der = root_der
        self.root = x509.load_der_x509_certificate(root_der)
        key = self.root.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CertificateRefused("the overlay root's key is not ECDSA")
        self._root_key = key
        self.overlay_name = overlay_name
        self._now = now

    def identify(self, certificate: x509.Certificate) -> CertifiedIdentity:
        if certificate.issuer != self.root.subject:
            raise CertificateRefused("certificate was not issued by this overlay's CA")
        algorithm = certificate.signature_hash_algorithm
        if not isinstance(algorithm, hashes.SHA256):
            raise CertificateRefused("certificate is not signed with ECDSA-SHA256")
        try:
            self._root_key.verify(
                certificate.signature,
                certificate.tbs_certificate_bytes,
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature as e:
            raise CertificateRefused("certificate's signature is not the overlay CA's") from e
        now = datetime.datetime.fromtimestamp(self._now(), datetime.timezone.utc)
        if now < certificate.not_valid_before_utc:
            raise CertificateRefused(
                f"certificate is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M}"
            )
        if now > certificate.not_valid_after_utc:
            raise CertificateRefused(
                f"certificate expired at {certificate.not_valid_after_utc:%Y-%m-%d %H:%M}"
            )
        node_ids, user_name = claims(certificate)
        ours = tuple(node_id for node_id, overlay in node_ids if overlay == self.overlay_name)
        if not ours:
            raise CertificateRefused(f"certificate names no Node-ID in overlay {self.overlay_name}")
        return CertifiedIdentity(ours, user_name)
