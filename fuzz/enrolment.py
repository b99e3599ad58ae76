"""
Fuzz what the enrolment server and client read from strangers (``p2psip.enrolment``).

The first input byte picks the reader, the rest is its input:

* 0: the enrolment form (``decode_request``): only ``MalformedRequest``;
* 1: a CSR (``load_csr``): only ``RequestRefused``;
* 2: an overlay configuration document, checked against the seeds' root
  (``read_configuration``) and read for its declared roots
  (``declared_roots``): only ``ConfigurationRefused``; and a document this
  root did not sign must never be accepted.

Seeds: a form and a CSR as ``p2psip enrol`` sends them, and a document the
CA signed.  The CA key is made once per run, so the signed seed verifies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fuzz.common import HarnessFailure, instrumented, main

with instrumented():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from p2psip.enrolment.authority import OverlayAuthority, RequestRefused, load_csr
    from p2psip.enrolment.configuration import (
        ConfigurationRefused,
        OverlayConfiguration,
        bootstrap_nodes,
        declared_roots,
        describe_kinds,
        read_configuration,
        write_configuration,
    )
    from p2psip.enrolment.requests import (
        EnrolmentRequest,
        MalformedRequest,
        decode_request,
        encode_request,
    )
    from p2psip.overlay.kinds import DEFAULT_KINDS

NOW = time.time()
OVERLAY = "fuzz.p2psip.test"
AUTHORITY = OverlayAuthority.create(OVERLAY, NOW)
KEY = ec.generate_private_key(ec.SECP256R1())
CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")]))
    .sign(KEY, hashes.SHA256())
    .public_bytes(serialization.Encoding.PEM)
)
DOCUMENT = write_configuration(
    OverlayConfiguration(
        instance_name=OVERLAY,
        sequence=1,
        expiration=NOW + 3600,
        root_der=AUTHORITY.root_der,
        enrolment_servers=("https://127.0.0.1:8443/enrol",),
        bootstrap_nodes=bootstrap_nodes([("127.0.0.1", 6084)]),
        kinds=describe_kinds(DEFAULT_KINDS.values()),
        max_message_size=5000,
        initial_ttl=20,
        chord_ping_interval_seconds=60,
        chord_update_interval_seconds=60,
    ),
    AUTHORITY,
)
#: What the CA signed: any document the reader accepts must say exactly this.
SIGNED = read_configuration(DOCUMENT, AUTHORITY.root_der, NOW)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        try:
            decode_request(body)
        except MalformedRequest:
            pass
    elif mode == 1:
        try:
            load_csr(body)
        except RequestRefused:
            pass
    else:
        try:
            declared_roots(body)
        except ConfigurationRefused:
            pass
        try:
            accepted = read_configuration(body, AUTHORITY.root_der, NOW)
        except ConfigurationRefused:
            return
        if accepted != SIGNED:
            raise HarnessFailure(
                f"an accepted document says what the CA did not sign: {accepted!r}"
            )


def seeds() -> Iterator[bytes]:
    form = EnrolmentRequest(username="ops@fuzz.p2psip.test", password="secret", csr=CSR)
    yield b"\x00" + encode_request(form)
    yield b"\x01" + CSR
    yield b"\x02" + DOCUMENT


if __name__ == "__main__":
    main(test_one_input, seeds)
