"""Errors the overlay reports to its users (the SIP layer, the admin API)."""

from __future__ import annotations


class OverlayError(Exception):
    """
    A RELOAD operation failed.

    ``error_code`` is the RFC 6940 error code when a peer answered with an
    Error message (see :class:`p2psip.overlay.message.ErrorCode`), or None
    for local failures such as a timeout with no answer at all.
    """

    def __init__(self, reason: str, error_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code


class RequestTimeout(OverlayError):
    """No answer within the transaction timeout (RFC 6940 s6.2.1)."""


class NotConnected(OverlayError):
    """The node has no usable link into the ring (not joined, or cut off)."""


class UnexpectedPeer(OverlayError):
    """A new link's far end is another node than the one that was meant."""


class RequestFailed(OverlayError):
    """The responsible peer answered with a RELOAD Error."""


class NotResponsible(RequestFailed):
    """
    The answer came from a node that cannot own the target: a node we know
    lies between the target and it (Chord's rule), so the answer was refused.
    """
