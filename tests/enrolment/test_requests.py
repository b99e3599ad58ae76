"""The enrolment form (RFC 6940 s11.3): encoded by the client, decoded strictly by the server."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.requests import (
    EnrolmentRequest,
    MalformedRequest,
    decode_request,
    encode_request,
)


class RequestCodecTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """Every field survives the form encoding, the password is not in repr."""
        request = EnrolmentRequest(
            "alice@example.org", "p&ss=word", b"\x30\x01csr", node_certificate=b"\x30cert"
        )
        self.assertEqual(decode_request(encode_request(request)), request)
        self.assertNotIn("p&ss", repr(request))

    def test_pem_csr(self) -> None:
        """A PEM CSR is taken as it is."""
        body = b"username=a%40b.c&password=x&csr=-----BEGIN+CERTIFICATE+REQUEST-----%0AAA%3D%3D"
        self.assertTrue(decode_request(body).csr.startswith(b"-----BEGIN"))

    def test_refused(self) -> None:
        """Missing, repeated, unknown and malformed fields are refused with a reason."""
        for body in (
            b"username=a&password=b",
            b"username=a&password=b&csr=AA%3D%3D&csr=AA%3D%3D",
            b"username=a&password=b&csr=AA%3D%3D&admin=1",
            b"username=a&password=b&csr=%%%",
            b"username=a&password=b&csr=not*base64",
            b"username=a&password=b&csr=AA%3D%3D&nodeids=2",
            b"username=a&password=b&csr=AA%3D%3D&nodeids=-1",
            # Digits str.isdigit() takes and int() refuses ("\u00b2") or reads ("\u0661"):
            # the first raised ValueError.
            b"username=a&password=b&csr=AA%3D%3D&nodeids=%C2%B2",
            b"username=a&password=b&csr=AA%3D%3D&nodeids=%D9%A1",
            b"\xff\xfe",
            b"x" * 40000,
        ):
            self.assertRaises(MalformedRequest, decode_request, body)
