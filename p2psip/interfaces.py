"""
The seams between layers.

Lower layers never import higher ones; where a higher layer needs a lower
one's service it asks for one of these interfaces and the role wires in the
implementation.  Tests swap in their own implementations and check them
with ``zope.interface.verify.verifyObject``.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IOverlayStorage(Interface):
    """
    What the SIP layer needs from the overlay.

    User records live in RELOAD dictionary kinds (SIP-REGISTRATION is kind
    1, RFC 7904): one dictionary per resource name (the user's name), one
    entry per registering node.  The SIP layer encodes and decodes the entry
    values itself; the overlay signs, stores, replicates and expires them.

    Who may write an entry is the Kind's access policy: SIP-REGISTRATION
    entries must be signed with a certificate naming the user and this
    node's Node-ID.  The node holds such credentials for the users it
    serves; the SIP layer asks for one (:meth:`user_credential`) and hands
    it back, as an opaque object, to the store that needs it.
    """

    local_node_id = Attribute("This node's 128-bit Node-ID, an int.")

    def user_credential(user_name: str) -> object:
        """
        The credential this node signs ``user_name``'s values with (opaque to
        the caller), or None when it holds none for that user.
        """

    def put_dictionary_entry(
        resource_name: str,
        kind_id: int,
        key: bytes,
        value: bytes,
        lifetime_seconds: int,
        signer: object = None,
    ) -> object:
        """
        Store (or replace) one dictionary entry at the responsible peer.

        ``signer`` is a credential from :meth:`user_credential`; None signs
        with the node's own identity.

        :returns: a Deferred that fires with None once the responsible peer
            has accepted the value, or fails with
            ``p2psip.overlay.errors.OverlayError``.
        """

    def remove_dictionary_entry(
        resource_name: str, kind_id: int, key: bytes, signer: object = None
    ) -> object:
        """Delete one entry (a RELOAD store with exists=False), signed as for put; a Deferred."""

    def get_dictionary(resource_name: str, kind_id: int) -> object:
        """
        Fetch every live entry of the dictionary.

        :returns: a Deferred firing with ``dict[bytes, bytes]`` (empty when
            nothing is stored there).
        """

    def resolve_application(node_id: int, application: int) -> object:
        """
        Find where a peer serves an application (RELOAD AppAttach).

        ``application`` is the port-number-style id RELOAD uses (5060 for
        SIP).  :returns: a Deferred firing with ``(host, port)``.
        """


class IApplicationRegistry(Interface):
    """Where a node's applications announce their listeners for AppAttach."""

    def set_application_address(application: int, host: str, port: int) -> None:
        """Answer AppAttach for ``application`` with ``host:port``."""


class ISuperNodeOverlay(IOverlayStorage, IApplicationRegistry):
    """The overlay node as a SIP super-node uses it: storage and AppAttach."""

    advertised_host = Attribute("The host other peers reach this node's overlay listener at.")

    def add_user_certificate(certificate_der: bytes) -> object:
        """
        Sign for the user a DER certificate names from now on (one the
        overlay CA issued for this node's key and Node-ID).

        :raises ValueError: the certificate cannot sign for this node.
        """
