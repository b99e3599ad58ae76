"""
Fuzz the STUN codec (RFC 8489): ``decode_message``, its attribute helpers,
``verify_integrity`` and ``StunStreamDecoder``.

The first byte picks the mode:

0. one datagram, RFC 5389+ only; 1. one datagram, RFC 3489 messages
   allowed.  Only :class:`StunDecodeError` may escape, from decoding or from
   the attribute helpers (the module: "untrusted bytes only ever raise
   StunDecodeError").  ``verify_integrity`` answers True or False and
   raises nothing.  A message that decodes re-encodes (attributes "survive
   untouched") to bytes that decode to an equal message, with FINGERPRINT
   recomputed since re-encoding pads with zeros.
2. a TCP stream, after one byte of chunk size: only
   :class:`StunDecodeError` may escape, and the chunked stream gives the
   messages the whole stream gives.

Seeds: the RFC 5769 and RFC 8489 vectors from the shared test data, and
messages this codec encodes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fuzz.common import HarnessFailure, instrumented, main, mode, same_when_chunked, shared_files

with instrumented():
    from p2psip.nat import stun
    from p2psip.nat.stun import AttributeType, StunDecodeError, StunMessage

KEY = b"VOkJxbRl1RmTxUk/WvJxBt"
UNDERSTOOD = (AttributeType.USERNAME, AttributeType.MESSAGE_INTEGRITY, AttributeType.FINGERPRINT)


def use(message: StunMessage) -> None:
    """Call every attribute helper; each may refuse a bad value only with StunDecodeError."""
    helpers: list[Any] = [
        message.xor_mapped_address,
        message.mapped_address,
        message.reflexive_address,
        message.other_address,
        message.response_origin,
        message.error_code,
        message.unknown_attributes,
        message.change_request,
        message.response_port,
        message.software,
    ]
    for helper in helpers:
        try:
            helper()
        except StunDecodeError:
            pass
    (message.is_classic, message.attribute_types())
    stun.unknown_required_attributes(message, UNDERSTOOD)


def round_trip(message: StunMessage, allow_classic: bool) -> None:
    fingerprint = message.get(AttributeType.FINGERPRINT) is not None
    kept = tuple(a for a in message.attributes if a[0] != AttributeType.FINGERPRINT)
    bare = StunMessage(
        message.method, message.message_class, message.transaction_id, kept, message.magic_cookie
    )
    wire = stun.encode_message(bare, fingerprint=fingerprint)
    again = stun.decode_message(wire, allow_classic=allow_classic)
    if fingerprint:
        again = StunMessage(
            again.method,
            again.message_class,
            again.transaction_id,
            again.attributes[:-1],
            again.magic_cookie,
        )
    if again != bare:
        raise HarnessFailure(f"message changed on a round trip: {bare!r} -> {again!r}")


def datagram(data: bytes, allow_classic: bool) -> None:
    if not isinstance(stun.verify_integrity(data, KEY), bool):
        raise HarnessFailure("verify_integrity answered something else than a bool")
    stun.is_stun(data)
    try:
        message = stun.decode_message(data, allow_classic=allow_classic)
    except StunDecodeError:
        return
    use(message)
    round_trip(message, allow_classic)


def stream(data: bytes) -> None:
    def feed(pieces: list[bytes]) -> list[StunMessage] | StunDecodeError:
        decoder = stun.StunStreamDecoder()
        found: list[StunMessage] = []
        try:
            for piece in pieces:
                found += decoder.feed(piece)
        except StunDecodeError as e:
            return e
        return found

    whole = same_when_chunked(feed, data, StunDecodeError)
    for message in whole or []:
        use(message)


def test_one_input(data: bytes) -> None:
    selector, payload = mode(data, 3)
    if selector == 2:
        stream(payload)
    else:
        datagram(payload, allow_classic=selector == 1)


def seeds() -> Iterator[bytes]:
    vectors = [*shared_files("stun-rfc5769", "*.bin"), *shared_files("stun-rfc8489", "*.bin")]
    request = stun.binding_request(b"\x01" * 12, change_ip=True, software="fuzz")
    classic = StunMessage(request.method, request.message_class, b"\x02" * 12, (), 0x01020304)
    encoded = [
        stun.encode_message(request, integrity_key=KEY),
        stun.encode_message(
            stun.binding_success(
                request,
                ("192.0.2.1", 32853),
                other_address=("2001:db8::1", 3479),
                response_origin=("192.0.2.2", 3478),
                software="fuzz",
            ),
            integrity_sha256_key=KEY,
        ),
        stun.encode_message(
            stun.error_response(request, 420, "Unknown", unknown_attributes=(0x7777, 0x0003)),
            fingerprint=False,
        ),
        stun.encode_message(stun.binding_success(classic, ("192.0.2.3", 9)), fingerprint=False),
    ]
    for message in vectors + encoded:
        yield b"\x00" + message
        yield b"\x01" + message
        yield b"\x02\x00" + message + message
    yield b"\x02\x03" + b"".join(encoded[:3])


if __name__ == "__main__":
    main(test_one_input, seeds)
