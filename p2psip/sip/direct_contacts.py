"""
Which phones a caller's super-node may call without the callee's super-node.

A call to a phone served by another super-node normally crosses two
proxies: the caller's super-node finds the callee's in the overlay, hands
it the INVITE over AppAttach, and that one forwards it to the phone.  The
second hop is needed when only the serving super-node can reach the phone
(a NAT's flow, a TCP or TLS connection the phone opened, SIP Outbound) or
has to relay its media.  A phone on a public address that registered from
that very address is reachable by anyone, as RFC 7904's ``sip_registration_uri``
form says a registration may be: the second hop then only costs time (each
proxy hop is a fraction of a millisecond of CPU and of latency).

So the serving super-node marks such bindings ``direct`` in the contact
list it stores (:mod:`p2psip.sip.location`), and a caller's super-node sends
to a marked contact itself, Record-Routing as always.  Both sides decide
with one policy (``--sip-direct-contacts``):

``public`` (the default)
    only contacts at globally routable addresses.  A caller's super-node
    must not be pointed, by a value another node wrote, at hosts of its own
    private network or at itself.
``any``
    private and loopback addresses too: every super-node and phone share one
    network (a LAN, a lab, a benchmark on one host).
``off``
    never: every call crosses the callee's super-node.

The evidence a binding needs (:func:`reachable_directly`): a plain ``sip:``
UDP contact whose host is an IP address, the very address the REGISTER came
from (no NAT rewrote it), no SIP Outbound flow, and a serving super-node
that does not relay every call's media (``--media-relay always``).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from p2psip.sip.errors import SipParseError
from p2psip.sip.uri import SipURI, parse_uri

__all__ = [
    "DIRECT_CONTACT_POLICIES",
    "TARGET_PARAMETER",
    "DialogTargets",
    "DirectContacts",
    "direct_contact_policy",
]

#: ``--sip-direct-contacts`` values, the default first.
DIRECT_CONTACT_POLICIES = ("public", "any", "off")


def direct_contact_policy(text: str) -> str:
    """
    A ``--sip-direct-contacts`` value, checked.

    :raises ValueError: naming the values allowed.
    """
    value = text.strip().lower()
    if value not in DIRECT_CONTACT_POLICIES:
        raise ValueError(
            f"--sip-direct-contacts {text!r}: give one of {', '.join(DIRECT_CONTACT_POLICIES)}"
        )
    return value


def _udp_address(contact: SipURI) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of a plain ``sip:`` UDP contact, or None for any other kind."""
    if contact.scheme != "sip":
        return None
    transport = contact.parameters.get("transport")
    if transport is not None and transport.lower() != "udp":
        return None
    try:
        return ipaddress.ip_address(contact.host.strip("[]"))
    except ValueError:
        return None  # a name: the caller would need DNS, and a name proves nothing


class DirectContacts:
    """One ``--sip-direct-contacts`` policy, for both sides of a call."""

    def __init__(self, policy: str = "public", *, relays_every_call: bool = False) -> None:
        self.policy = direct_contact_policy(policy)
        #: This node relays the media of every call with its phones: never skip it.
        self.relays_every_call = relays_every_call

    def _allowed(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if self.policy == "off" or address.is_unspecified or address.is_multicast:
            return False
        return self.policy == "any" or address.is_global

    def reachable_directly(
        self,
        contact: object,
        source_host: str | None,
        transport: str | None,
        *,
        outbound: bool,
    ) -> bool:
        """
        Whether a binding this node serves may be called without it.

        ``contact`` is the binding's URI, ``source_host`` and ``transport``
        where its REGISTER came from.
        """
        if self.relays_every_call or outbound or not isinstance(contact, SipURI):
            return False
        if transport is None or transport.upper() != "UDP" or source_host is None:
            return False
        address = _udp_address(contact)
        if address is None or not self._allowed(address):
            return False
        try:
            source = ipaddress.ip_address(source_host.strip("[]"))
        except ValueError:
            return False
        return source == address

    def may_call_directly(self, contact: str) -> SipURI | None:
        """
        The contact as a URI, when another node's ``direct`` binding may be
        called straight from here; None when the call must cross its node.
        """
        if self.policy == "off":
            return None
        try:
            uri = parse_uri(contact)
        except SipParseError:
            return None
        if not isinstance(uri, SipURI):
            return None
        address = _udp_address(uri)
        if address is None or not self._allowed(address):
            return None
        return uri


#: The Record-Route parameter that lets a dialog's requests reach a phone
#: served elsewhere (:class:`DialogTargets`).
TARGET_PARAMETER = "p2psip-target"


class DialogTargets:
    """
    Proof, carried in our own Record-Route entry, that a dialog's requests
    may go from here to one address that is not a phone of ours.

    Inside a dialog this proxy forwards a request that names no phone it
    serves only along a route set; when it called a phone directly, the
    route set ends with it, and the phone's super-node is not there to
    deliver.  So the Record-Route entry of each such branch carries
    ``p2psip-target=TOKEN``: a keyed hash of the Call-ID and the address the
    INVITE was sent to.  An in-dialog request whose Route names us with a
    token that matches its Call-ID and its Request-URI's address goes there;
    anything else is still a stranger asking to be relayed.  Nothing is kept
    per dialog, so workers and long calls need no table.
    """

    #: Hex digits of the token (64 bits: not guessable within a dialog's life).
    TOKEN_DIGITS = 16

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the dialog target secret needs at least 16 bytes")
        self._secret = secret

    def token(self, call_id: str, host: str, port: int) -> str:
        """The token for requests of dialog ``call_id`` to ``host``:``port``."""
        text = f"{call_id}\n{host.lower().strip('[]')}:{port}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self._secret, text, hashlib.sha256).hexdigest()
        return digest[: self.TOKEN_DIGITS]

    def allows(self, token: str, call_id: str, host: str, port: int) -> bool:
        """Whether ``token`` was issued for this dialog and address."""
        return hmac.compare_digest(token.lower(), self.token(call_id, host, port))
