"""The one error the SIP message layer raises for bad input."""

from __future__ import annotations


class SipParseError(ValueError):
    """
    Bytes that are not an acceptable SIP message.

    ``status`` is the response code a server should answer with (400 unless
    the problem has its own code: 505 for a SIP version other than 2.0, 513
    for a message over the size limit, 501 for an unknown method whose CSeq
    does not match, 416 for an unsupported Request-URI scheme) and
    ``reason`` names the problem in words that fit a reason phrase.
    ``raw`` holds the offending bytes when the parser knew them, so that a
    transport can still build an error response from the raw header fields.
    """

    def __init__(self, reason: str, status: int = 400, raw: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.raw = raw

    def __repr__(self) -> str:
        return f"SipParseError({self.reason!r}, status={self.status})"
