"""
Fuzz the RELOAD codec (RFC 6940): messages, bodies and stream framing.

The first byte picks the mode:

0. a whole message: ``decode_message``, ``peek_header`` and ``peek_code``.
   Only :class:`DecodeError` may escape.  A message that decodes must
   re-encode to the very same bytes (``p2psip.overlay.message`` promises
   it: signatures are checked over re-encoded contents), and its body is
   then decoded by its message code as in mode 1.
1. a body: two bytes of message code, then the body for ``decode_body``
   (with the SIP-REGISTRATION, DATA and an array kind known).  Only
   :class:`DecodeError` may escape; a body that decodes must re-encode to
   bytes that decode to an equal body.  The structures nested in some
   bodies (CHORD-RELOAD leave data, Error_Unknown_Kind's kind list) are
   decoded too.
2. a framed stream (s6.5.1), after one byte of chunk size: only
   :class:`DecodeError` may escape, the chunked stream gives the frames the
   whole stream gives, each frame re-encodes to its own bytes, and each
   data frame's message is decoded as in mode 0.

There are no public RELOAD vectors (see the shared testdata/reload/README),
so the seeds are messages this codec encodes: a Ping, a signed Store, a
Fetch answer, an Attach, an Error and the other bodies.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fuzz.common import HarnessFailure, chunks, instrumented, main, mode, same_when_chunked

with instrumented():
    from p2psip.overlay import bodies as b
    from p2psip.overlay.codec import DecodeError
    from p2psip.overlay.framing import AckFrame, DataFrame, FrameDecoder, encode_frame
    from p2psip.overlay.kinds import DEFAULT_KINDS, data_models
    from p2psip.overlay.message import (
        UNSIGNED,
        Destination,
        ErrorCode,
        ForwardingOption,
        GenericCertificate,
        Message,
        MessageCode,
        MessageExtension,
        SecurityBlock,
        decode_message,
        encode_message,
        make_header,
        peek_code,
        peek_header,
        replace_header,
    )

ARRAY_KIND = 0xF0000002
MODELS = {**data_models(DEFAULT_KINDS), ARRAY_KIND: b.DataModel.ARRAY}
DICTIONARY_KIND, SINGLE_KIND = 1, 0xF0000001
MAX_FRAME = 65536


def body(code: int, data: bytes) -> None:
    try:
        decoded: Any = b.decode_body(code, data, data_models=MODELS)
    except DecodeError:
        return
    again = b.decode_body(code, decoded.encode(), data_models=MODELS)
    if again != decoded:
        raise HarnessFailure(f"body changed on a round trip: {decoded!r} -> {again!r}")
    try:
        if isinstance(decoded, b.LeaveReq):
            b.ChordLeaveData.decode(decoded.overlay_specific)
        elif isinstance(decoded, b.ErrorResponse) and decoded.error_code == ErrorCode.UNKNOWN_KIND:
            b.decode_unknown_kinds(decoded.error_info)
        elif (
            isinstance(decoded, b.ErrorResponse)
            and decoded.error_code == ErrorCode.GENERATION_COUNTER_TOO_LOW
        ):
            b.StoreAns.decode(decoded.error_info, data_models=MODELS)
    except DecodeError:
        pass


def message(data: bytes) -> None:
    try:
        header = peek_header(data)
    except DecodeError:
        header = None
    try:
        peek_code(data)
        decoded = decode_message(data)
    except DecodeError:
        return
    if header != decoded.header:
        raise HarnessFailure("peek_header disagrees with decode_message")
    if encode_message(decoded) != data:
        raise HarnessFailure(f"re-encoding changed the message: {data!r}")
    if replace_header(data, decoded.header) != data:
        raise HarnessFailure("replacing the header with itself changed the message")
    body(decoded.code, decoded.body)


def frames(data: bytes) -> None:
    def feed(pieces: list[bytes]) -> list[Any] | DecodeError:
        decoder = FrameDecoder(max_message_bytes=MAX_FRAME)
        found: list[Any] = []
        try:
            for piece in pieces:
                found += decoder.feed(piece)
        except DecodeError as e:
            return e
        return found

    whole = same_when_chunked(feed, data, DecodeError)
    if whole is None:
        return
    payload = chunks(data)[1]
    if b"".join(encode_frame(frame) for frame in whole) != payload[: sum_lengths(whole)]:
        raise HarnessFailure("frames do not re-encode to their bytes")
    for frame in whole:
        if isinstance(frame, DataFrame):
            message(frame.message)  # what a link hands the overlay next


def sum_lengths(found: list[Any]) -> int:
    return sum(9 if isinstance(f, AckFrame) else 8 + len(f.message) for f in found)


def test_one_input(data: bytes) -> None:
    selector, payload = mode(data, 3)
    if selector == 0:
        message(payload)
    elif selector == 1:
        body(int.from_bytes(payload[:2], "big"), payload[2:])
    else:
        frames(payload)


# -- seeds ----------------------------------------------------------------------------------


def sample_bodies(signature: Any) -> list[Any]:
    """One body of every message code, with every data model and candidate type."""
    meta = b.MetaData(True, 3, 4, b"\x09" * 32)
    stored = (
        b.StoredData(1000, 3600, b.DictionaryEntry(b"key", b.DataValue(True, b"v")), signature),
    )
    store = b.StoreReq(
        0x00112233445566778899AABBCCDDEEFF,
        0,
        (
            b.StoreKindData(DICTIONARY_KIND, 3, stored),
            b.StoreKindData(
                SINGLE_KIND, 1, (b.StoredData(1, 2, b.DataValue(False, b""), signature),)
            ),
            b.StoreKindData(
                ARRAY_KIND,
                0,
                (b.StoredData(1, 2, b.ArrayEntry(5, b.DataValue(True, b"a")), signature),),
            ),
        ),
    )
    host = b.IceCandidate(
        b.IpAddressPort("192.0.2.1", 6084),
        b.OverlayLinkType.TLS_TCP_FH_NO_ICE,
        b"f1",
        100,
        b.CandidateType.HOST,
    )
    relayed = b.IceCandidate(
        b.IpAddressPort("2001:db8::1", 5),
        4,
        b"f2",
        5,
        b.CandidateType.RELAYED,
        b.IpAddressPort("198.51.100.2", 7),
        (b.IceExtension(b"n", b"v"),),
    )
    specifiers = (
        b.StoredDataSpecifier(SINGLE_KIND, 0, data_model=b.DataModel.SINGLE_VALUE),
        b.StoredDataSpecifier(
            ARRAY_KIND, 0, indices=(b.ArrayRange(0, 0xFFFFFFFF),), data_model=b.DataModel.ARRAY
        ),
        b.StoredDataSpecifier(
            DICTIONARY_KIND, 0, keys=(b"a", b"b"), data_model=b.DataModel.DICTIONARY
        ),
    )
    return [
        b.PingReq(b"\x00" * 4),
        b.PingAns(1, 1700000000000),
        b.JoinReq(7, b"chord"),
        b.JoinAns(b"x"),
        b.LeaveReq(9, b.ChordLeaveData(b.ChordLeaveType.FROM_PREDECESSOR, (1, 2)).encode()),
        b.LeaveAns(),
        b.UpdateReq(5, b.ChordUpdateType.PEER_READY),
        b.UpdateReq(5, b.ChordUpdateType.FULL, (1,), (2, 3), (4,)),
        b.UpdateAns(),
        b.RouteQueryReq(True, Destination.resource(99), b""),
        b.RouteQueryAns(123),
        b.ProbeReq((b.ProbeInformationType.UPTIME, b.ProbeInformationType.NUM_RESOURCES)),
        b.ProbeAns((b.ProbeInformation(b.ProbeInformationType.UPTIME, 77),)),
        store,
        b.StoreAns((b.StoreKindResponse(DICTIONARY_KIND, 4, (1, 2)),)),
        b.FetchReq(5, specifiers),
        b.FetchAns(
            tuple(
                b.FetchKindResponse(k.kind, k.generation_counter, k.values) for k in store.kind_data
            )
        ),
        b.StatReq(5, specifiers[2:]),
        b.StatAns(
            (
                b.StatKindResponse(SINGLE_KIND, 1, (b.StoredMetaData(1, 2, meta),)),
                b.StatKindResponse(
                    ARRAY_KIND, 1, (b.StoredMetaData(1, 2, b.ArrayEntryMeta(3, meta)),)
                ),
                b.StatKindResponse(
                    DICTIONARY_KIND, 1, (b.StoredMetaData(1, 2, b.DictionaryEntryMeta(b"k", meta)),)
                ),
            )
        ),
        b.FindReq(5, (1, 2)),
        b.FindAns((b.FindKindData(1, 0), b.FindKindData(2, 77))),
        b.AttachReq(b"u", b"p", b"active", (host, relayed), True),
        b.AttachAns(b"u", b"p", b"passive", (host,)),
        b.AppAttachReq(b"u", b"p", 5060, b"active", (host,)),
        b.AppAttachAns(b"u", b"p", 5060, b"passive", ()),
        b.ErrorResponse(ErrorCode.NOT_FOUND, "not found"),
        b.ErrorResponse(ErrorCode.UNKNOWN_KIND, "", b.encode_unknown_kinds([7])),
    ]


def seeds() -> Iterator[bytes]:
    from p2psip.overlay.identity import NodeIdentity

    identity = NodeIdentity.generate()
    for number, sample in enumerate(sample_bodies(identity.sign(b"stored value"))):
        encoded = sample.encode()
        yield b"\x01" + int(sample.CODE).to_bytes(2, "big") + encoded
        header = make_header(
            0x12345678,
            number,
            (Destination.node(2**127 + number),),
            via_list=(Destination.node(number),) if number % 2 else (),
        )
        plain = encode_message(Message(header, sample.CODE, encoded))
        yield b"\x00" + plain
        if number % 4 == 0:
            yield (
                b"\x02\x00"
                + encode_frame(DataFrame(number, plain))
                + encode_frame(AckFrame(number, 0b101))
            )
    # A signed Store, as a node sends it, with options, extensions and compressed/opaque hops.
    contents = sample_bodies(identity.sign(b"stored value"))[13].encode()
    header = make_header(
        1,
        99,
        (Destination.compressed_id(0x8001), Destination.opaque(b"\x01\x02")),
        options=(ForwardingOption(1, 0x80, b"opt"),),
    )
    security = SecurityBlock(
        (GenericCertificate(0, identity.certificate_der),), identity.sign(contents)
    )
    signed = Message(
        header, MessageCode.STORE_REQ, contents, (MessageExtension(7, True, b"x"),), security
    )
    yield b"\x00" + encode_message(signed)
    yield b"\x00" + encode_message(Message(header, MessageCode.PING_REQ, b"\x00\x00", (), UNSIGNED))
    yield b"\x02\x05" + encode_frame(DataFrame(2**32 - 1, encode_message(signed)))


if __name__ == "__main__":
    main(test_one_input, seeds)
