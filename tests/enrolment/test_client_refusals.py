"""How the enrolment client reads a server's refusal (``p2psip.enrolment.client``)."""

from __future__ import annotations

from attrs import define, field
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from p2psip.enrolment import client
from p2psip.enrolment.client import EnrolmentUnavailable


@define
class Refusal:
    """The parts of an IResponse ``_refused`` reads."""

    code: int
    headers: Headers = field(factory=Headers)
    phrase: bytes = b"Service Unavailable"


class RefusalTests(SynchronousTestCase):
    def retry_after(self, value: bytes) -> float | None:
        response = Refusal(503, Headers({b"Retry-After": [value]}))
        with self.assertRaises(EnrolmentUnavailable) as caught:
            client._refused(response, b"busy", "https://192.0.2.1:8443/enrol")  # type: ignore[arg-type]
        return caught.exception.retry_after

    def test_retry_after(self) -> None:
        """
        Retry-After in seconds is kept; anything else (a date, the Latin-1
        superscript two, which str.isdigit() takes and float() refused with
        ValueError) is ignored.
        """
        self.assertEqual(self.retry_after(b"120"), 120.0)
        for value in (b"Fri, 31 Dec 1999 23:59:59 GMT", b"\xb2", b""):
            self.assertIsNone(self.retry_after(value))
