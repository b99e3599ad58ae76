"""
The few fields a stateless answer copies, read from a datagram without the full parse.

An overloaded super-node must refuse new INVITEs and REGISTERs for far
less than it costs to serve them, or the refusals eat the CPU the served
requests need and the excess is lost unanswered in the socket buffer.  The
full parser (:func:`p2psip.sip.message.parse_message`) validates every
field a server relies on (RFC 4475), which is most of a refusal's cost and
wasted on a request that gets a 503.  :func:`read_refusable` reads only
the start line's method and the Via, From, To, Call-ID and CSeq lines.

It is strict the other way round: anything it does not read plainly (a
folded line, a repeated or missing field, a method other than INVITE or
REGISTER, bytes that are not UTF-8, a control character such as a bare CR
or LF, no end of the header section) gives
None, and the datagram goes the full way, which answers it correctly
(400, 513, or 503 through the transaction layer's stateless refusal).
"""

from __future__ import annotations

import re

from attrs import frozen

from p2psip.sip.message import canonical_name, split_comma_list

#: The requests the overload guard refuses (p2psip.sip.overload.GUARDED_METHODS), as they start.
_REFUSABLE_STARTS = (b"INVITE ", b"REGISTER ")
_COPIED_FIELDS = frozenset({"From", "To", "Call-ID", "CSeq"})
#: Characters no header line may hold (tab aside).  A bare LF in a From
#: value copied into our 503 would start a header line of the sender's
#: choosing; the full parser refuses these with 400.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f]")


@frozen
class RefusableRequest:
    """What a stateless 503 to a new INVITE or REGISTER needs, as the text of its lines."""

    method: str
    #: Every Via value, topmost first (split at commas).
    vias: tuple[str, ...]
    from_: str
    to: str
    call_id: str
    cseq: str


def read_refusable(datagram: bytes, max_header_bytes: int) -> RefusableRequest | None:
    """The fields of an INVITE or REGISTER in ``datagram``, or None to parse it in full."""
    if not datagram.startswith(_REFUSABLE_STARTS):
        return None
    end = datagram.find(b"\r\n\r\n")
    if end < 0 or end > max_header_bytes:
        return None
    try:
        text = datagram[:end].decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    if any(_CONTROL.search(line) for line in lines):
        return None
    method = lines[0].partition(" ")[0]
    vias: list[str] = []
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line or line[0] in " \t":
            return None  # a folded line: the full parser unfolds it
        name, colon, value = line.partition(":")
        if not colon:
            return None
        name = canonical_name(name.strip(" \t"))
        if name == "Via":
            vias.extend(split_comma_list(value))
        elif name in _COPIED_FIELDS:
            if name in fields:
                return None
            fields[name] = value.strip(" \t")
    if not vias or len(fields) != len(_COPIED_FIELDS) or not all(vias):
        return None
    return RefusableRequest(
        method, tuple(vias), fields["From"], fields["To"], fields["Call-ID"], fields["CSeq"]
    )
