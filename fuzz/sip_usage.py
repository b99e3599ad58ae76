"""
Fuzz the SIP usage's SIP-REGISTRATION values (RFC 7904, ``p2psip.usages.sip``).

The whole input is one stored value for ``decode_registration``: only
:class:`DecodeError` may escape ("never anything else"), and a value that
decodes re-encodes to bytes that decode to an equal value.

Seeds: URI and route registrations this codec encodes, one of an unknown
type, and a URI registration of each Contact URI of the RFC 4475 torture
messages in the shared test data.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fuzz.common import HarnessFailure, instrumented, main, shared_files

with instrumented():
    from p2psip.overlay.message import Destination
    from p2psip.usages.sip import (
        SIP_REGISTRATION_URI,
        DecodeError,
        SipRegistration,
        decode_registration,
        encode_registration,
        key_node_id,
    )


def test_one_input(data: bytes) -> None:
    key_node_id(data[:16])
    try:
        registration = decode_registration(data)
    except DecodeError:
        return
    registration.node_ids
    again = decode_registration(encode_registration(registration))
    if again != registration:
        raise HarnessFailure(f"registration changed on a round trip: {registration!r} -> {again!r}")


def seeds() -> Iterator[bytes]:
    samples = [
        SipRegistration(SIP_REGISTRATION_URI, uri="sip:alice@192.0.2.1:5060;transport=tcp"),
        SipRegistration.route('<sip:alice@p2psip.test>;q=0.5;+sip.instance="<urn:x>"', 1, 2**127),
        SipRegistration(
            2,
            contact_prefs="",
            destination_list=(
                Destination.resource(5),
                Destination.opaque(b"\x01"),
                Destination.compressed_id(0x8123),
            ),
        ),
        SipRegistration(77, unknown=b"future"),
    ]
    for sample in samples:
        yield encode_registration(sample)
    for message in shared_files("sip-torture", "*.dat"):
        for uri in CONTACT_URI.findall(message):
            text = uri.decode("utf-8", "replace")
            yield encode_registration(SipRegistration(SIP_REGISTRATION_URI, uri=text))
            yield encode_registration(SipRegistration.route(f"<{text}>", 1, 2**127))


#: A Contact header's bracketed URI (the torture messages hold odd ones on purpose).
CONTACT_URI = re.compile(rb"^(?:Contact|m)\s*:[^<\r\n]*<([^>\r\n]{1,400})>", re.I | re.M)


if __name__ == "__main__":
    main(test_one_input, seeds)
