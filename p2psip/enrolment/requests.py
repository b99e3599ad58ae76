"""
The enrolment request on the wire (RFC 6940 s11.3), both ways.

A node asks for a certificate with an HTTPS POST to the enrolment server,
``Content-Type: application/x-www-form-urlencoded``, ``Accept:
application/pkix-cert``, whose form fields are

``username``, ``password``
    the account's credentials;
``nodeids``
    how many Node-IDs it asks for (this CA grants one);
``csr``
    a PKCS#10 certificate signing request for the node's key, base64 DER
    (PEM is accepted too).  Only its key and its signature matter: the CA
    picks the Node-ID and takes the user name from the account.

and, an extension of this overlay,

``node-certificate``
    (base64 DER) for a *user* certificate bound to an existing
    super-node: that super-node's current certificate, made with the same
    key as the CSR.  The CA copies its Node-ID into the user certificate.

A granted request is answered ``200`` with the DER certificate as
``application/pkix-cert``.  Sans-IO.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, urlencode

from attrs import field, frozen

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
CERTIFICATE_CONTENT_TYPE = "application/pkix-cert"
#: RFC 6940 s11.2: what the configuration document is served as.
CONFIGURATION_CONTENT_TYPE = "application/p2p-overlay+xml"
#: RFC 6940 s11.2: where the configuration document lives on its server.
CONFIGURATION_PATH = "/.well-known/reload-config"
#: Where this overlay's enrolment server takes requests.
ENROLMENT_PATH = "/enrol"

#: A request is a few hundred bytes of CSR plus a certificate; bodies
#: larger than this are refused before they are read.
MAX_REQUEST_BYTES = 32 * 1024
#: At most this many form fields are parsed.
MAX_FORM_FIELDS = 8
#: A CA here grants one Node-ID per certificate; more is refused as a
#: request this server cannot meet rather than silently shortened.
MAX_NODE_IDS = 1

_FIELDS = frozenset({"username", "password", "nodeids", "csr", "node-certificate"})


class MalformedRequest(ValueError):
    """The form is not an enrolment request; ``str(error)`` says what is wrong."""


@frozen
class EnrolmentRequest:
    """What one enrolment POST asks for."""

    username: str
    #: Kept out of ``repr`` so that it never reaches a log line.
    password: str = field(repr=False)
    csr: bytes = field(repr=False)
    node_ids: int = 1
    #: DER of the super-node's certificate, for a user certificate.
    node_certificate: bytes | None = None

    @property
    def for_user_certificate(self) -> bool:
        return self.node_certificate is not None


def encode_request(request: EnrolmentRequest) -> bytes:
    """The form body of ``request``."""
    fields = [
        ("username", request.username),
        ("password", request.password),
        ("nodeids", str(request.node_ids)),
        ("csr", base64.b64encode(request.csr).decode("ascii")),
    ]
    if request.node_certificate is not None:
        fields.append(
            ("node-certificate", base64.b64encode(request.node_certificate).decode("ascii"))
        )
    return urlencode(fields).encode("ascii")


def decode_request(body: bytes) -> EnrolmentRequest:
    """
    Parse a form body from an untrusted client.

    :raises MalformedRequest: too large, not UTF-8 form encoding, a field
        missing, repeated or unknown, or a bad number or base64 value.
    """
    if len(body) > MAX_REQUEST_BYTES:
        raise MalformedRequest(f"request body larger than {MAX_REQUEST_BYTES} bytes")
    try:
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise MalformedRequest(f"not a form-encoded body: {e}") from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name not in _FIELDS:
            raise MalformedRequest(f"unknown form field {name[:40]!r}")
        if name in fields:
            raise MalformedRequest(f"form field {name!r} given twice")
        fields[name] = value
    for name in ("username", "password", "csr"):
        if not fields.get(name):
            raise MalformedRequest(f"the form needs a field {name!r}")
    node_ids_text = fields.get("nodeids", "1")
    if not (node_ids_text.isascii() and node_ids_text.isdigit()) or len(node_ids_text) > 3:
        raise MalformedRequest("nodeids must be a small whole number")
    node_ids = int(node_ids_text)
    if not 1 <= node_ids <= MAX_NODE_IDS:
        raise MalformedRequest(f"this CA grants {MAX_NODE_IDS} Node-ID per certificate")
    certificate = fields.get("node-certificate")
    return EnrolmentRequest(
        username=fields["username"],
        password=fields["password"],
        csr=_csr_bytes(fields["csr"]),
        node_ids=node_ids,
        node_certificate=None if certificate is None else _base64("node-certificate", certificate),
    )


def _csr_bytes(text: str) -> bytes:
    """A CSR field: PEM text as it is, anything else base64 DER."""
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode("ascii", "replace")
    return _base64("csr", text)


def _base64(name: str, text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRequest(f"form field {name!r} is not base64") from None
