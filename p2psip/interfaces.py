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
    1, RFC 7904): one dictionary per resource name (the AOR), one entry per
    registering node.  The SIP layer encodes and decodes the entry values
    itself; the overlay signs, stores, replicates and expires them.
    """

    local_node_id = Attribute("This node's 128-bit Node-ID, an int.")

    def put_dictionary_entry(
        resource_name: str, kind_id: int, key: bytes, value: bytes, lifetime_seconds: int
    ) -> object:
        """
        Store (or replace) one dictionary entry at the responsible peer.

        :returns: a Deferred that fires with None once the responsible peer
            has accepted the value, or fails with
            ``p2psip.overlay.errors.OverlayError``.
        """

    def remove_dictionary_entry(resource_name: str, kind_id: int, key: bytes) -> object:
        """Delete one entry (a RELOAD store with exists=False); a Deferred."""

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
