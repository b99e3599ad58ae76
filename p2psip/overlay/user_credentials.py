"""
The user credentials a node signs with besides its own identity.

A SIP phone proves its user with a password, which the overlay cannot
check; SIP-REGISTRATION's USER-NODE-MATCH policy (RFC 7904 s3, RFC 6940
s7.3.3) wants the registration signed by a certificate that names the user
and the registering node's Node-ID.  So a super-node keeps, per user it
serves, a certificate the overlay CA issued for the super-node's own key and
Node-ID with the user's name (``DATA_DIR/user-certs/``, filled by
``p2psip enrol --user``), and signs that user's values with it.  Its private
key stays the node's.

In an ``--insecure`` ring (the trust policy takes certificates at their
word) the node makes a self-signed credential for any user the first time
one is needed, since no CA exists to ask; such a ring protects nobody's
registration from a peer that claims the same name.
"""

from __future__ import annotations

from collections import OrderedDict

from p2psip.overlay.identity import (
    CertificateCache,
    IdentityError,
    NodeIdentity,
    SignatureError,
)
from p2psip.util.ids import id_short
from p2psip.util.logs import Logger

#: Self-signed credentials an insecure node keeps (least recently used go first).
MAX_SELF_SIGNED_CREDENTIALS = 4096


class CredentialError(ValueError):
    """A user certificate cannot sign for this node; ``str(error)`` says why."""


class UserCredentials:
    """This node's user credentials, by user name."""

    log = Logger()

    def __init__(
        self,
        identity: NodeIdentity,
        certificates: CertificateCache,
        *,
        max_self_signed: int = MAX_SELF_SIGNED_CREDENTIALS,
    ) -> None:
        self.identity = identity
        self.certificates = certificates
        self._enrolled: dict[str, NodeIdentity] = {}
        self._self_signed: OrderedDict[str, NodeIdentity] = OrderedDict()
        self._max_self_signed = max_self_signed
        #: Signer identity (the certificate hash) -> certificate, of every
        #: credential held: answers name their values' signers' certificates
        #: per value, which must not cost a walk over every user.
        self._by_signer: dict[bytes, bytes] = {}

    @property
    def insecure(self) -> bool:
        """Whether credentials may be made here (the ring trusts self-signed certificates)."""
        return bool(self.certificates.trust.insecure)

    def add_certificate(self, certificate_der: bytes) -> NodeIdentity:
        """
        Sign for the user ``certificate_der`` names from now on.

        :raises CredentialError: the certificate is not for this node's key,
            names no user, is not trusted in this overlay, or names another
            Node-ID.
        """
        try:
            credential = self.identity.with_certificate(certificate_der)
        except IdentityError as e:
            raise CredentialError(f"not a certificate for this node's key: {e}") from e
        if credential.user_name is None:
            raise CredentialError("the certificate names no user")
        try:
            proven = self.certificates.identify(certificate_der)
        except SignatureError as e:
            raise CredentialError(str(e)) from e
        if self.identity.node_id not in proven.node_ids:
            raise CredentialError(
                f"the certificate is for Node-ID {id_short(proven.node_id)}, "
                f"not this node's {id_short(self.identity.node_id)}"
            )
        self.certificates.add_identity(credential)
        self._enrolled[credential.user_name] = credential
        self._by_signer[credential.signer_identity().value] = credential.certificate_der
        return credential

    def credential_for(self, user_name: str) -> NodeIdentity | None:
        """
        The credential that signs ``user_name``'s values, or None without one.

        An insecure node makes (and remembers) a self-signed one.
        """
        credential = self._enrolled.get(user_name)
        if credential is not None:
            return credential
        if not self.insecure:
            return None
        credential = self._self_signed.get(user_name)
        if credential is None:
            credential = self.identity.self_signed_user(user_name)
            self._self_signed[user_name] = credential
            self._by_signer[credential.signer_identity().value] = credential.certificate_der
            while len(self._self_signed) > self._max_self_signed:
                _, evicted = self._self_signed.popitem(last=False)
                self._by_signer.pop(evicted.signer_identity().value, None)
        else:
            self._self_signed.move_to_end(user_name)
        self.certificates.add_identity(credential)
        return credential

    def certificate_for_signer(self, signer_identity: bytes) -> bytes | None:
        """The certificate of the credential a SignerIdentity value names, if we hold it."""
        return self._by_signer.get(signer_identity)

    def enrolled(self) -> list[NodeIdentity]:
        """The CA-issued credentials, in the order they were added."""
        return list(self._enrolled.values())

    def all(self) -> list[NodeIdentity]:
        """Every credential held, enrolled ones first."""
        return [*self._enrolled.values(), *self._self_signed.values()]
