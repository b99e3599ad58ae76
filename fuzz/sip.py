"""
Fuzz the SIP parser: ``parse_message`` (datagrams) and ``SipStreamDecoder`` (streams).

The first byte picks the mode:

* even: the rest is one datagram.  Only :class:`SipParseError` may escape,
  and not its "unparseable message" form, which is the parser's defence in
  depth against its own bugs.  A message that parses has every typed field
  checked (the module promises it "can be used without further error
  handling"), and its wire form parses again to the same wire form.
  The overloaded node's partial read (:mod:`p2psip.sip.quick_read`)
  and its 503 may raise nothing but :class:`SipParseError`; that 503
  must parse whatever came in, and for a datagram the full parser
  accepts it must equal the transaction layer's (its Retry-After aside).
* odd: the rest is a stream, after one byte of chunk size (see
  :func:`fuzz.common.chunks`).  Only :class:`SipParseError` may escape, and
  the chunked stream must give the same messages as the stream fed whole.

Seeds: the RFC 4475 torture messages from the shared test data.
"""

from __future__ import annotations

from collections.abc import Iterator

from fuzz.common import HarnessFailure, instrumented, main, mode, same_when_chunked, shared_files

with instrumented():
    from p2psip.sip.message import (
        AnyMessage,
        Request,
        SipParseError,
        SipStreamDecoder,
        error_response,
        make_response,
        parse_message,
    )
    from p2psip.sip.overload import OverloadGuard, OverloadThresholds, StatelessRefusals
    from p2psip.sip.transport import read_for_refusal, stamp_received
    from p2psip.sip.uri import URI, SipURI, parse_uri
    from twisted.internet.task import Clock

# Small limits, so that the fuzzer reaches the size checks with short inputs.
MAX_MESSAGE = 8192
MAX_HEADER = 4096


def use_uri(uri: URI) -> None:
    """A URI's wire form parses back to an equal URI ("escaped again, in canonical form")."""
    again = parse_uri(str(uri))
    if isinstance(uri, SipURI):
        (uri.transport, uri.loose_route, uri.address_of_record(), hash(uri))
        if again != uri or hash(again) != hash(uri):
            raise HarnessFailure(f"URI changed on a round trip: {uri} -> {again}")
    elif str(again) != str(uri):
        raise HarnessFailure(f"URI changed on a round trip: {uri} -> {again}")
    if str(uri.copy()) != str(uri):
        raise HarnessFailure(f"a copy of {uri} differs from it")


def use(message: AnyMessage) -> bytes:
    """Touch every typed field; none may raise once the message parsed."""
    for via in message.vias:
        (via.branch, via.received, via.rport, via.rport_requested, via.sent_by, via.reliable)
        str(via)
    message.via
    for address in (message.from_, message.to, *message.routes, *message.record_routes):
        (address.tag, str(address))
        use_uri(address.uri)
    for contact in message.contacts:
        (contact.expires, contact.q, str(contact))
        use_uri(contact.uri)
    (message.call_id, message.cseq, message.max_forwards, message.expires)
    (message.contact_wildcard, message.content_type)
    copy = message.copy()
    if isinstance(message, Request):
        use_uri(message.uri)
        # What a server does with a request: answer it, tagging To.  The
        # answer must itself parse: the far end reads what we copied.
        for response in (make_response(message, 486, to_tag="fuzz"), make_response(message, 100)):
            try:
                use(parse_message(response.to_bytes(), max_header_bytes=2 * MAX_HEADER))
            except SipParseError as e:
                raise HarnessFailure(f"our answer does not parse ({e.reason}): {response!r}") from e
    else:
        copy.headers.pop_first_value("Via")  # what a proxy does with a response
    copy.to_bytes()
    return message.to_bytes()


def check_error(error: SipParseError) -> None:
    if error.reason.startswith("unparseable message ("):
        raise HarnessFailure(f"the parser's defence in depth caught a bug: {error.reason}")
    error_response(error)


#: A node that refuses every new INVITE and REGISTER (its loop lag is always past the threshold).
REFUSING = StatelessRefusals(
    OverloadGuard(OverloadThresholds(max_lag_seconds=1e-9), lambda: 0, lambda: 1.0),
    Clock(),
    lambda method: None,
)
SOURCE = ("192.0.2.1", 5060)


def early_refusal(data: bytes) -> bytes | None:
    """The overloaded transport's 503 from a partial read, as SipTransport.refused_early makes it."""
    read = read_for_refusal(data, *SOURCE, MAX_HEADER)
    if read is None:
        return None
    return REFUSING.datagram_refusal(*read)


def without_retry_after(data: bytes) -> list[bytes]:
    return [line for line in data.split(b"\r\n") if not line.startswith(b"Retry-After")]


def datagram(data: bytes) -> None:
    early = early_refusal(data)
    if early is not None:
        try:
            parse_message(early)  # whatever came in, the 503 we send is well-formed
        except SipParseError as e:
            raise HarnessFailure(f"the early 503 does not parse ({e.reason}): {early!r}") from e
    try:
        message = parse_message(data, max_message_bytes=MAX_MESSAGE, max_header_bytes=MAX_HEADER)
    except SipParseError as e:
        check_error(e)
        return
    if early is not None:
        assert isinstance(message, Request)
        stamp_received(message, *SOURCE)
        full = REFUSING.refusal(message)
        if full is None or without_retry_after(full.to_bytes()) != without_retry_after(early):
            raise HarnessFailure(f"the early 503 differs from the full one: {early!r}, {full!r}")
    wire = use(message)
    again = parse_message(wire, max_message_bytes=2 * MAX_MESSAGE, max_header_bytes=2 * MAX_HEADER)
    if again.to_bytes() != wire:
        raise HarnessFailure(f"wire form changed on a re-parse: {wire!r} -> {again.to_bytes()!r}")


def feed(pieces: list[bytes]) -> list[bytes] | SipParseError:
    decoder = SipStreamDecoder(max_message_bytes=MAX_MESSAGE, max_header_bytes=MAX_HEADER)
    wires: list[bytes] = []
    try:
        for piece in pieces:
            wires += [use(message) for message in decoder.feed(piece)]
            decoder.take_keepalive_pings()
    except SipParseError as e:
        return e
    return wires


def stream(data: bytes) -> None:
    same_when_chunked(feed, data, SipParseError)


def test_one_input(data: bytes) -> None:
    selector, payload = mode(data, 2)
    if selector == 0:
        datagram(payload)
    else:
        stream(payload)


def seeds() -> Iterator[bytes]:
    for message in shared_files("sip-torture", "*.dat"):
        yield b"\x00" + message
        yield b"\x01\x00" + message + message  # two messages on a stream, fed whole
        yield b"\x01\x07" + b"\r\n\r\n" + message  # a keepalive, then the message in 7-byte chunks


if __name__ == "__main__":
    main(test_one_input, seeds)
