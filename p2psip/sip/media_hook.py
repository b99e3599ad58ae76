"""
The seam between the proxy and a media relay (:mod:`p2psip.media.anchor`).

The proxy tells a :class:`MediaHook` of every message it forwards that can
carry SDP or end a call; the hook may replace the body (so the media goes
through a relay) and refuses a request it cannot serve by raising
:class:`~p2psip.sip.errors.SipParseError` with the status to answer (400
for a body that is no SDP, 488 for one the relay cannot serve, 503 when no
relay port is left).  The SIP layer knows nothing else of media: the
relay is built and wired by the roles, and a proxy without a hook
forwards bodies untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from p2psip.sip.message import Request, Response
from p2psip.sip.transaction import Hop
from p2psip.sip.uri import URI


class MediaHook(Protocol):
    def request_forwarding(
        self, request: Request, source: Hop, targets: Sequence[tuple[URI, Hop]]
    ) -> bytes | None:
        """
        ``request`` (as received, our Route removed) is about to go to
        ``targets``: the body every copy should carry instead, or None to
        keep it.

        :raises SipParseError: answer the request with the error's status.
        """

    def response_forwarding(self, response: Response) -> None:
        """
        ``response`` goes upstream (a 2xx retransmission too): rewrite its
        body in place if need be.
        """

    def ack_forwarding(self, ack: Request) -> None:
        """An ACK for a 2xx is forwarded (it may carry the answer to a late offer)."""

    def call_cancelled(self, invite: Request) -> None:
        """The caller cancelled ``invite``."""

    def detour(self, request: Request) -> tuple[str, Hop] | None:
        """
        Called after :meth:`request_forwarding`: the Route value and the
        address of another super-node whose relay must carry this call
        (this one has none to spare), or None to forward as usual.
        """
