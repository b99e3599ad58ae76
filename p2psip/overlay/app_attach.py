"""
Applications served by this node, found by others with AppAttach.

RELOAD's AppAttach (RFC 6940 s6.5.2) asks a peer where it serves an
application, named by a port-number-style id (5060 for SIP, RFC 7904
s6); the answer carries the application's address as a candidate.  The
SIP layer announces its listener here and asks other super-nodes for
theirs through :meth:`Applications.resolve`.

The answers are remembered by address (:meth:`Applications.node_at`): a
connection to an address the overlay gave may have to be made by Node-ID
instead, through the mediator, when the address is a private one behind
a NAT (the thin client's SIP adaptor, ``roles/client_traversal.py``).
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.internet.defer import Deferred, fail, succeed

from p2psip.overlay import bodies
from p2psip.overlay.connectivity import Connectivity, host_candidate
from p2psip.overlay.errors import OverlayError
from p2psip.overlay.links import Link
from p2psip.overlay.message import Destination, ErrorCode, Message, MessageCode
from p2psip.overlay.messaging import Answer, Messenger, Reply, RequestRefused
from p2psip.util.ids import id_short

#: Addresses remembered with the node that answered for them, at most (oldest go first).
MAX_RESOLVED_ADDRESSES = 1024


class Applications:
    """Our application listeners by application id, and AppAttach to others'."""

    def __init__(self, messenger: Messenger, connectivity: Connectivity) -> None:
        self.messenger = messenger
        self.connectivity = connectivity
        self.addresses: dict[int, tuple[str, int]] = {}
        #: (host, port) -> the node whose AppAttach answer named it last.
        self._resolved: OrderedDict[tuple[str, int], int] = OrderedDict()
        messenger.handle(MessageCode.APP_ATTACH_REQ, self._on_app_attach)

    def set_address(self, application: int, host: str, port: int) -> None:
        """Answer AppAttach for ``application`` with ``host:port``."""
        self.addresses[application] = (host, port)

    def resolve(self, node_id: int, application: int) -> Deferred[tuple[str, int]]:
        """Where peer ``node_id`` serves ``application`` (an AppAttach to it)."""
        if node_id == self.messenger.node_id:
            address = self.addresses.get(application)
            if address is None:
                return fail(OverlayError(f"application {application} is not served by this node"))
            return succeed(address)
        request = bodies.AppAttachReq(
            b"", b"", application, b"passive", (self.connectivity.candidate,)
        ).encode()

        def done(answer: Answer) -> tuple[str, int]:
            if answer.responder != node_id:
                raise OverlayError(f"peer {id_short(node_id)} is not in the ring")
            candidate = answer.body.candidates[0]
            address = (candidate.address.host, candidate.address.port)
            self._remember(address, node_id)
            return address

        return self.messenger.request(
            Destination.node(node_id), MessageCode.APP_ATTACH_REQ, request
        ).addCallback(done)

    def node_at(self, host: str, port: int) -> int | None:
        """The node whose AppAttach answer last named ``host:port`` (None: none did)."""
        return self._resolved.get((host.lower().strip("[]"), port))

    def _remember(self, address: tuple[str, int], node_id: int) -> None:
        key = (address[0].lower().strip("[]"), address[1])
        self._resolved.pop(key, None)
        self._resolved[key] = node_id
        while len(self._resolved) > MAX_RESOLVED_ADDRESSES:
            self._resolved.popitem(last=False)

    def _on_app_attach(self, link: Link, message: Message, signer: int) -> Reply:
        limits = self.messenger.config.limits
        request = bodies.AppAttachReq.decode(message.body, limits)
        address = self.addresses.get(request.application)
        if address is None:
            raise RequestRefused(
                ErrorCode.NOT_FOUND, f"application {request.application} not served here"
            )
        answer = bodies.AppAttachAns(
            b"", b"", request.application, b"active", (host_candidate(address[0], address[1]),)
        )
        return Reply(MessageCode.APP_ATTACH_ANS, answer.encode())
