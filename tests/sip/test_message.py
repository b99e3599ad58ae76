"""Tests for p2psip.sip.message: the RFC 4475 torture messages, framing, building."""

from __future__ import annotations

import csv
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import (
    AbsoluteURI,
    CSeq,
    Headers,
    NameAddress,
    Request,
    Response,
    SipParseError,
    SipStreamDecoder,
    SipURI,
    TelURI,
    Via,
    check_request_uri_scheme,
    error_response,
    make_request,
    make_response,
    parse_message,
    parse_uri,
    split_comma_list,
)
from p2psip.sip import message as message_module
from p2psip.testing import shared_path


def torture_dir() -> Path:
    return shared_path("testdata", "sip-torture")


def torture(name: str) -> bytes:
    return (torture_dir() / f"{name}.dat").read_bytes()


def parse_request(name: str) -> Request:
    message = parse_message(torture(name))
    assert isinstance(message, Request)
    return message


def manifest() -> dict[str, str]:
    with (torture_dir() / "MANIFEST.tsv").open(newline="") as f:
        return {row["file"]: row["category"] for row in csv.DictReader(f, delimiter="\t")}


# Files whose MANIFEST category is not "valid" but that RFC 4475 says must
# parse (the application, not the parser, answers them).
PARSE_BUT_REJECT_LATER = {
    "badbranch",
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "bcast",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
    "inv2543",
}
EXPECTED_ERROR_STATUS = {
    "badaspec": 400,
    "baddate": 400,
    "baddn": 400,
    "badinv01": 400,
    "badvers": 505,
    "bigcode": 400,
    "clerr": 400,
    "escruri": 400,
    "insuf": 400,
    "ltgtruri": 400,
    "lwsruri": 400,
    "lwsstart": 400,
    "mcl01": 400,
    "mismatch01": 400,
    "mismatch02": 501,
    "multi01": 400,
    "ncl": 400,
    "quotbal": 400,
    "regbadct": 400,
    "scalar02": 400,
    "scalarlg": 400,
    "test": 400,
    "trws": 400,
}


class TortureManifestTests(SynchronousTestCase):
    """Every RFC 4475 message is treated as MANIFEST.tsv says."""

    def test_every_file_is_classified(self) -> None:
        """Invalid files are expected to fail, valid ones to parse, and every file has one expectation."""
        by_category: dict[str, set[str]] = {}
        for file, category in manifest().items():
            by_category.setdefault(category, set()).add(file.removesuffix(".dat"))
        must_fail = set(EXPECTED_ERROR_STATUS)
        must_parse = set().union(*by_category.values()) - must_fail
        self.assertLessEqual(by_category["invalid"], must_fail)
        self.assertLessEqual(
            by_category["valid"] | by_category["backward-compatibility"], must_parse
        )
        self.assertEqual(must_parse - by_category["valid"], PARSE_BUT_REJECT_LATER)

    def test_valid_messages_parse(self) -> None:
        """Valid and application-layer files parse without error."""
        for name in sorted(
            set(n.removesuffix(".dat") for n in manifest()) - set(EXPECTED_ERROR_STATUS)
        ):
            with self.subTest(name=name):
                parse_message(torture(name))

    def test_invalid_messages_raise_with_status(self) -> None:
        """Invalid files raise SipParseError with the status the RFC suggests."""
        for name, status in sorted(EXPECTED_ERROR_STATUS.items()):
            with self.subTest(name=name):
                error = self.assertRaises(SipParseError, parse_message, torture(name))
                self.assertEqual(error.status, status, error.reason)

    def test_invalid_requests_get_an_error_response(self) -> None:
        """Where the raw fields allow it, an error response echoes Via, CSeq and Call-ID."""
        error = self.assertRaises(SipParseError, parse_message, torture("mismatch01"))
        response = parse_message(error_response(error) or b"")
        assert isinstance(response, Response)
        self.assertEqual((response.status, response.call_id), (400, "mismatch01.dj0234sxdfl3"))
        error = self.assertRaises(SipParseError, parse_message, torture("badvers"))
        self.assertTrue(
            (error_response(error) or b"").startswith(b"SIP/2.0 505 Version Not Supported (")
        )
        error = self.assertRaises(SipParseError, parse_message, torture("scalarlg"))
        self.assertIsNone(error_response(error), "responses are never answered")
        error = self.assertRaises(SipParseError, parse_message, torture("insuf"))
        self.assertIsNone(error_response(error), "no Call-ID/From/To to echo")


class ValidTortureTests(SynchronousTestCase):
    """Specific values of the valid torture messages."""

    def test_wsinv(self) -> None:
        """Folded, oddly spaced and odd-case fields parse to their values."""
        m = parse_request("wsinv")
        self.assertEqual(m.method, "INVITE")
        self.assertEqual(m.max_forwards, 68)
        self.assertEqual(m.cseq, CSeq(9, "INVITE"))
        self.assertEqual(m.to.tag, "1918181833n")
        self.assertEqual(m.from_.tag, "98asjd8")
        self.assertEqual(m.from_.display_name, 'J Rosenberg \\"')
        self.assertEqual([v.branch for v in m.vias], ["390skdjuw", "z9hG4bK9ikj8", "z9hG4bK30239"])
        self.assertEqual([v.transport for v in m.vias], ["UDP", "TCP", "UDP"])
        self.assertEqual(m.vias[2].host, "192.168.255.111")
        self.assertEqual(
            m.headers.get("NewFangledHeader"), "newfangled value continued newfangled value"
        )
        self.assertEqual(m.headers.get("UnknownHeaderWithUnusualValue"), ";;,,;;,;")
        self.assertEqual(m.headers.get("Subject"), "")
        [contact] = m.contacts
        self.assertEqual(contact.display_name, 'Quoted string ""')
        self.assertEqual(contact.q, 0.33)
        self.assertEqual(contact.parameters["newparam"], "newvalue")
        [route] = m.routes
        assert isinstance(route.uri, SipURI)
        self.assertTrue(route.uri.loose_route)
        self.assertEqual(route.uri.parameters["unknownwith"], "value")
        self.assertEqual(len(m.body), 150)

    def test_intmeth(self) -> None:
        """An unusual method token and Request-URI userinfo are kept intact."""
        m = parse_request("intmeth")
        self.assertEqual(m.method, "!interesting-Method0123456789_*+`.%indeed'~")
        assert isinstance(m.uri, SipURI)
        self.assertEqual(m.uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        self.assertEqual(m.uri.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        self.assertEqual(m.to.display_name, "BEL:\x07 NUL:\x00 DEL:\x7f")
        self.assertEqual(m.from_.display_name, "token1~` token2'+_ token3*%!.-")
        self.assertEqual(m.from_.tag, "_token~1'+`*%!-.")
        self.assertEqual(m.call_id, "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
        self.assertEqual(m.headers.get("extensionHeader-!.%*+_`'~"), "\ufeff大停電")

    def test_esc01(self) -> None:
        """%-escapes in SIP URIs are undone exactly once."""
        m = parse_request("esc01")
        assert isinstance(m.uri, SipURI)
        self.assertEqual(m.uri.user, "sips:user@example.com")
        self.assertEqual(str(m.uri), "sip:sips%3Auser%40example.com@example.net")
        assert isinstance(m.to.uri, SipURI) and isinstance(m.from_.uri, SipURI)
        self.assertEqual(m.to.uri.user, "user")
        self.assertEqual(m.from_.uri.user, "I have spaces")
        contact_uri = m.contacts[0].uri
        assert isinstance(contact_uri, SipURI)
        self.assertEqual(contact_uri.user, "caller")
        self.assertEqual(contact_uri.parameters, {"lr": None, "name": "value%41"})

    def test_escnull(self) -> None:
        """Escaped NULs stay inside the user name and give two distinct contacts."""
        m = parse_request("escnull")
        self.assertEqual(
            [str(c.uri) for c in m.contacts],
            ["sip:%00@host5.example.com", "sip:%00%00@host5.example.com"],
        )
        assert isinstance(m.to.uri, SipURI)
        self.assertEqual(m.to.uri.user, "null-\x00-null")
        self.assertEqual(m.to.uri.address_of_record(), "sip:null-%00-null@example.com")

    def test_esc02(self) -> None:
        """A % where no escape is allowed is literal; C%6Fntact is another header."""
        m = parse_request("esc02")
        self.assertEqual(m.method, "RE%47IST%45R")
        self.assertEqual(m.to.display_name, "%Z%45")
        self.assertEqual(len(m.contacts), 2)
        self.assertEqual(m.headers.get("C%6Fntact"), "<sip:alias2@host2.example.com>")

    def test_lwsdisp_and_semiuri(self) -> None:
        """A display name glued to '<' and ';' in the URI user part are accepted."""
        self.assertEqual(parse_request("lwsdisp").from_.display_name, "caller")
        uri = parse_request("semiuri").uri
        assert isinstance(uri, SipURI)
        self.assertEqual(
            (uri.user, uri.host, uri.parameters), ("user;par=u@example.net", "example.com", {})
        )

    def test_longreq(self) -> None:
        """Long values are not truncated and all 34 Via values are found."""
        m = parse_request("longreq")
        self.assertEqual(len(m.vias), 34)
        self.assertEqual(
            (m.vias[0].host, m.vias[-1].host), ("sip33.example.com", "host.example.com")
        )
        self.assertEqual(len(m.from_.tag or ""), 155)
        self.assertTrue(m.call_id.startswith("longreq.onereallyreallyreally"))

    def test_dblreq(self) -> None:
        """Octets after Content-Length in a datagram are ignored."""
        m = parse_request("dblreq")
        self.assertEqual((m.method, m.body), ("REGISTER", b""))

    def test_transports(self) -> None:
        """Unknown Via transports parse."""
        m = parse_request("transports")
        self.assertEqual([v.transport for v in m.vias], ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"])

    def test_mpart01(self) -> None:
        """A binary body is framed strictly by Content-Length."""
        m = parse_request("mpart01")
        self.assertEqual(len(m.body), 553)
        self.assertIn(b"\x00", m.body)
        self.assertEqual(m.content_type, "multipart/mixed")
        self.assertTrue(m.via.rport_requested)
        self.assertIsNone(m.via.rport)

    def test_responses(self) -> None:
        """Unusual and empty reason phrases are accepted."""
        unusual = parse_message(torture("unreason"))
        empty = parse_message(torture("noreason"))
        assert isinstance(unusual, Response) and isinstance(empty, Response)
        self.assertEqual(unusual.status, 200)
        self.assertIn("простое", unusual.reason)
        self.assertEqual((empty.status, empty.reason), (100, ""))

    def test_application_layer_values(self) -> None:
        """Messages that the application rejects expose what it needs to decide."""
        self.assertIsInstance(parse_request("unkscm").uri, AbsoluteURI)
        self.assertEqual(parse_request("novelsc").uri.scheme, "soap.beep")
        unksm2 = parse_request("unksm2")
        self.assertEqual((unksm2.to.uri.scheme, unksm2.from_.uri.scheme), ("isbn", "http"))
        self.assertEqual(parse_request("zeromf").max_forwards, 0)
        self.assertEqual(parse_request("badbranch").via.branch, "z9hG4bK")
        cparam01 = parse_request("cparam01").contacts[0]
        self.assertEqual(
            (cparam01.parameters, getattr(cparam01.uri, "parameters")), ({"unknownparam": None}, {})
        )
        cparam02 = parse_request("cparam02").contacts[0]
        self.assertEqual(
            (cparam02.parameters, getattr(cparam02.uri, "parameters")), ({}, {"unknownparam": None})
        )
        regescrt = parse_request("regescrt").contacts[0].uri
        self.assertEqual(str(regescrt), "sip:user@example.com?Route=%3Csip:sip.example.com%3E")
        inv2543 = parse_request("inv2543")
        self.assertEqual(
            (inv2543.via.branch, inv2543.from_.tag, inv2543.max_forwards), (None, None, None)
        )
        self.assertTrue(inv2543.body.startswith(b"v=0") and inv2543.body.endswith(b"RTP/AVP 0\r\n"))

    def test_extension_and_body_fields(self) -> None:
        """Option tags, unknown media types, unknown auth schemes, Accept and a broadcast Via are readable."""
        bext01 = parse_request("bext01")
        self.assertEqual(
            bext01.headers.values("Require"), ["nothingSupportsThis", "nothingSupportsThisEither"]
        )
        self.assertEqual(
            bext01.headers.values("Proxy-Require"),
            ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"],
        )
        self.assertEqual(parse_request("invut").content_type, "application/unknownformat")
        self.assertEqual(
            parse_request("regaut01").headers.get_all("Authorization"),
            ["NoOneKnowsThisScheme opaque-data=here"],
        )
        self.assertEqual(parse_request("sdp01").headers.values("Accept"), ["text/nobodyKnowsThis"])
        bcast = parse_message(torture("bcast"))
        self.assertEqual([v.host for v in bcast.vias], ["192.0.2.198", "255.255.255.255"])

    def test_unsupported_scheme_is_416(self) -> None:
        """check_request_uri_scheme answers unknown schemes with 416."""
        error = self.assertRaises(SipParseError, check_request_uri_scheme, parse_request("unkscm"))
        self.assertEqual(error.status, 416)
        check_request_uri_scheme(parse_request("wsinv"))

    def test_round_trip_of_valid_files(self) -> None:
        """Serialising a parsed message and parsing it again keeps the values."""
        for name in (
            "wsinv",
            "intmeth",
            "esc01",
            "escnull",
            "longreq",
            "mpart01",
            "inv2543",
            "unreason",
        ):
            with self.subTest(name=name):
                first = parse_message(torture(name))
                second = parse_message(first.to_bytes())
                self.assertEqual(second.to_bytes(), first.to_bytes())
                self.assertEqual(second.body, first.body)
                self.assertEqual(str(second.vias[0]), str(first.vias[0]))


class StreamDecoderTests(SynchronousTestCase):
    """Content-Length framing on streams."""

    def test_byte_at_a_time(self) -> None:
        """Messages fed one byte at a time come out whole, in order."""
        data = torture("mpart01") + torture("esc01")
        decoder = SipStreamDecoder()
        messages = []
        for i in range(len(data)):
            messages += decoder.feed(data[i : i + 1])
        self.assertEqual(
            [m.call_id for m in messages],
            [parse_message(torture(n)).call_id for n in ("mpart01", "esc01")],
        )
        self.assertEqual(decoder.buffered_bytes, 0)

    def test_keepalives(self) -> None:
        """CRLFCRLF pings are counted; single CRLF pongs are skipped."""
        decoder = SipStreamDecoder()
        self.assertEqual(decoder.feed(b"\r\n\r\n\r\n"), [])
        [message] = decoder.feed(b"\r\n" + torture("esc01") + b"\r\n")
        self.assertEqual(message.call_id, "esc01.239409asdfakjkn23onasd0-3234")
        self.assertEqual(decoder.take_keepalive_pings(), 2)
        self.assertEqual(decoder.take_keepalive_pings(), 0)

    def test_missing_content_length_means_empty_body(self) -> None:
        """On a stream, a message without Content-Length has no body (the next message follows)."""
        data = torture("inv2543")
        head = data[: data.index(b"\r\n\r\n") + 4]
        [message] = SipStreamDecoder().feed(head)
        self.assertEqual(message.body, b"")

    def test_incomplete_body_waits(self) -> None:
        """A Content-Length larger than what arrived waits for more."""
        decoder = SipStreamDecoder()
        self.assertEqual(decoder.feed(torture("clerr")), [])

    def test_broken_stream_stays_broken(self) -> None:
        """After a framing error every feed raises again."""
        decoder = SipStreamDecoder()
        self.assertRaises(SipParseError, decoder.feed, torture("ncl"))
        self.assertRaises(SipParseError, decoder.feed, torture("esc01"))

    def test_unterminated_header_section_is_capped(self) -> None:
        """A peer that never ends its header section is stopped at the cap with 513."""
        decoder = SipStreamDecoder(max_header_bytes=1000)
        decoder.feed(b"OPTIONS sip:a@b SIP/2.0\r\n")
        error = self.assertRaises(SipParseError, decoder.feed, b"X: " + b"y" * 2000)
        self.assertEqual(error.status, 513)

    def test_header_section_at_the_cap_byte_at_a_time(self) -> None:
        """
        A header section of exactly the cap decodes however it arrives: the
        terminator's first three bytes in the buffer do not count against
        the cap (``fuzz/sip.py`` found a 4,096-byte head refused 513 when
        fed in pieces and accepted whole).
        """
        start = b"OPTIONS sip:a@example.org SIP/2.0\r\n"
        fixed = (
            b"Via: SIP/2.0/TCP h.example.org;branch=z9hG4bKcap\r\nFrom: <sip:b@example.org>;tag=1\r\n"
            b"To: <sip:a@example.org>\r\nCall-ID: cap\r\nCSeq: 1 OPTIONS\r\nX: "
        )
        head = start + fixed + b"y" * (1000 - len(start) - len(fixed))
        self.assertEqual(len(head), 1000)
        data = head + b"\r\n\r\n"
        whole = SipStreamDecoder(max_header_bytes=1000)
        [message] = whole.feed(data)
        pieces = SipStreamDecoder(max_header_bytes=1000)
        decoded = []
        for i in range(len(data)):
            decoded += pieces.feed(data[i : i + 1])
        self.assertEqual([m.call_id for m in decoded], [message.call_id])
        error = self.assertRaises(
            SipParseError, SipStreamDecoder(max_header_bytes=999).feed, data[:-1]
        )
        self.assertEqual(error.status, 513)

    def test_oversized_content_length(self) -> None:
        """A Content-Length over the message cap is refused before the body is buffered."""
        decoder = SipStreamDecoder(max_message_bytes=4096)
        data = torture("esc01").replace(
            b"Content-Length: 150", b"Content-Length: 99999999999999999999"
        )
        self.assertEqual(self.assertRaises(SipParseError, decoder.feed, data).status, 513)


class BuildingTests(SynchronousTestCase):
    """Building messages and responses."""

    def test_make_response_copies_fields(self) -> None:
        """A response copies Via lines, From, To, Call-ID and CSeq and adds a To tag."""
        request = parse_request("transports")
        response = make_response(request, 200, to_tag="abc")
        self.assertEqual(response.headers.get_all("Via"), request.headers.get_all("Via"))
        self.assertEqual(
            (response.to.tag, response.call_id, response.cseq),
            ("abc", request.call_id, request.cseq),
        )
        self.assertEqual(response.reason, "OK")
        self.assertIn(b"Content-Length: 0\r\n", response.to_bytes())

    def test_bare_uri_with_a_closing_bracket_is_refused(self) -> None:
        """
        A bare addr-spec holding ">" (``To: spi:user@exa>mple.com``) was
        taken, and every answer wrote it back as ``<spi:user@exa>mple.com>``,
        which does not parse (``fuzz/sip.py``, which now parses every answer
        it makes).  No URI holds ">", so it is 400 before anything is copied.
        """
        for text in ("spi:user@exa>mple.com", "sip:a>b@example.org;tag=1"):
            self.assertRaises(SipParseError, NameAddress.parse, text, "To")
        error = self.assertRaises(
            SipParseError,
            parse_message,
            b"REGISTER sip:example.org SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP h.example.org;branch=z9hG4bKgt\r\n"
            b"From: <sip:a@example.org>;tag=1\r\nTo: spi:user@exa>mple.com\r\n"
            b"Call-ID: gt\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(error.status, 400)
        # In <> it is the delimiter, and an answer's copy parses again.
        address = NameAddress.parse("<sip:user@example.org>;x=1", "To")
        address.parameters["tag"] = "t"
        self.assertEqual(str(NameAddress.parse(str(address), "To")), str(address))

    def test_content_length_set_on_serialisation(self) -> None:
        """Serialisation writes a Content-Length equal to the body length."""
        request = parse_request("esc01")
        request.body = b"hello"
        self.assertEqual(parse_message(request.to_bytes()).body, b"hello")

    def test_headers_compact_and_case(self) -> None:
        """Compact and odd-case names reach the same field."""
        headers = Headers([("v", "SIP/2.0/UDP a"), ("VIA", "SIP/2.0/UDP b, SIP/2.0/UDP c")])
        self.assertEqual(headers.values("Via"), ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"])
        headers.prepend("via", "SIP/2.0/TCP top")
        self.assertEqual(headers.pop_first_value("Via"), "SIP/2.0/TCP top")
        self.assertEqual(headers.pop_first_value("Via"), "SIP/2.0/UDP a")
        self.assertEqual(headers.pop_first_value("Via"), "SIP/2.0/UDP b")
        self.assertEqual(headers.get_all("Via"), ["SIP/2.0/UDP c"])

    def test_split_comma_list(self) -> None:
        """Commas inside quotes and <> do not split."""
        self.assertEqual(
            split_comma_list('"a, b" <sip:x@y;p=1,2>, <sip:z@w>'),
            ['"a, b" <sip:x@y;p=1,2>', "<sip:z@w>"],
        )

    def test_via_fields(self) -> None:
        """Via exposes branch, received, rport and sent-by."""
        via = Via.parse(
            "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKx;received=198.51.100.2;rport=4000"
        )
        self.assertEqual(
            (via.branch, via.received, via.rport, via.sent_by),
            ("z9hG4bKx", "198.51.100.2", 4000, ("192.0.2.1", 5062)),
        )
        self.assertEqual(
            str(via), "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKx;received=198.51.100.2;rport=4000"
        )

    def test_contact_wildcard(self) -> None:
        """Contact: * is a wildcard, not a URI."""
        request = parse_request("cparam01")
        request.headers.set("Contact", "*")
        self.assertTrue(request.contact_wildcard)
        self.assertEqual(request.contacts, [])

    def test_uris(self) -> None:
        """tel, sips and IPv6 URIs parse and serialise back."""
        tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
        self.assertEqual(tel, TelURI("+1-201-555-0123", {"phone-context": "example.com"}))
        sips = parse_uri("SIPS:alice@[2001:db8::1]:5061;transport=tcp")
        assert isinstance(sips, SipURI)
        self.assertEqual(
            (sips.scheme, sips.host, sips.port, sips.transport),
            ("sips", "[2001:db8::1]", 5061, "tcp"),
        )
        self.assertEqual(str(sips), "sips:alice@[2001:db8::1]:5061;transport=tcp")
        self.assertEqual(
            str(NameAddress(sips, 'Alice "A"', {"tag": "1"})),
            '"Alice \\"A\\"" <sips:alice@[2001:db8::1]:5061;transport=tcp>;tag=1',
        )


class URIEquivalenceTests(SynchronousTestCase):
    """RFC 3261 s19.1.4 URI comparison, with the RFC's own examples."""

    def test_equivalent(self) -> None:
        """The RFC's pairs of equivalent URIs compare equal and hash alike."""
        pairs = [
            ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
            ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;newparam=5"),
            (
                "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
                "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
            ),
            (
                "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
                "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
            ),
        ]
        for left, right in pairs:
            with self.subTest(left=left):
                self.assertEqual(parse_uri(left), parse_uri(right))
                self.assertEqual(hash(parse_uri(left)), hash(parse_uri(right)))

    def test_not_equivalent(self) -> None:
        """The RFC's pairs of different URIs compare unequal."""
        pairs = [
            ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
            ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
            ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
            ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
            ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
            ("sip:alice@example.com", "sips:alice@example.com"),
        ]
        for left, right in pairs:
            with self.subTest(left=left):
                self.assertNotEqual(parse_uri(left), parse_uri(right))


class TricklingPeerTests(SynchronousTestCase):
    """A peer sending one byte at a time costs linear work."""

    def test_large_message_byte_at_a_time(self) -> None:
        """A 60 KB message fed byte by byte is decoded once, whole."""
        body = b"x" * 50000
        request = parse_request("esc01")
        request.body = body
        data = request.to_bytes() + b"\r\n\r\n"
        decoder = SipStreamDecoder()
        messages = []
        for i in range(len(data)):
            messages += decoder.feed(data[i : i + 1])
        self.assertEqual([m.body for m in messages], [body])
        self.assertEqual(decoder.take_keepalive_pings(), 1)


class MakeRequestTests(SynchronousTestCase):
    """Building a request from values."""

    def test_make_request_round_trip(self) -> None:
        """A request built with make_request parses back to the same values."""
        alice = NameAddress(SipURI("example.org", "alice"), "Alice", {"tag": "a1"})
        bob = NameAddress(SipURI("example.org", "bob"))
        request = make_request(
            "MESSAGE",
            SipURI("example.org", "bob"),
            via=Via("UDP", "192.0.2.1", 5062, {"branch": "z9hG4bK1", "rport": None}),
            from_=alice,
            to=bob,
            call_id="c@h",
            cseq_number=7,
            contact=NameAddress(SipURI("192.0.2.1", "alice", port=5062)),
            routes=[NameAddress(SipURI("proxy.example.org", parameters={"lr": None}))],
            body=b"hi",
            content_type="text/plain",
        )
        parsed = parse_message(request.to_bytes())
        assert isinstance(parsed, Request)
        self.assertEqual(
            (parsed.method, parsed.cseq, parsed.call_id), ("MESSAGE", CSeq(7, "MESSAGE"), "c@h")
        )
        self.assertEqual(
            (parsed.from_.tag, parsed.from_.display_name, parsed.to.tag), ("a1", "Alice", None)
        )
        self.assertEqual(
            (parsed.body, parsed.content_type, parsed.max_forwards), (b"hi", "text/plain", 70)
        )
        self.assertEqual(str(parsed.routes[0].uri), "sip:proxy.example.org;lr")
        self.assertEqual(parsed.contacts[0].uri, SipURI("192.0.2.1", "alice", port=5062))


class ParseMemoTests(SynchronousTestCase):
    """What was parsed is kept per field, and From/To/Contact values are shared between messages."""

    INVITE = (
        b"INVITE sip:bob@example.org SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n"
        b"Max-Forwards: 70\r\n"
        b"From: <sip:alice@example.org>;tag=a1\r\n"
        b"To: <sip:bob@example.org>\r\n"
        b"Call-ID: memo-1\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:alice@192.0.2.1:5060>\r\n"
        b"Content-Length: 0\r\n\r\n"
    )

    def test_an_edit_forgets_only_the_field_edited(self) -> None:
        """A proxy's Via and Max-Forwards edits leave From, To and Contact parsed, and Via right."""
        message = parse_message(self.INVITE)
        parsed_from = message.headers._parsed["From"]
        message.headers.prepend("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-2")
        message.headers.set("Max-Forwards", "69")
        self.assertIs(message.headers._parsed["From"], parsed_from)
        self.assertNotIn("Via", message.headers._parsed)
        self.assertEqual([v.host for v in message.vias], ["198.51.100.7", "192.0.2.1"])
        self.assertEqual(message.max_forwards, 69)
        top = message.headers.pop_first_value("Via")
        self.assertEqual(top, "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-2")
        self.assertEqual([v.host for v in message.vias], ["192.0.2.1"])
        self.assertEqual(len(message.headers.values("Via")), 1)

    def test_a_copy_keeps_what_was_parsed_and_edits_apart(self) -> None:
        message = parse_message(self.INVITE)
        duplicate = message.copy()
        duplicate.headers.set("To", "<sip:bob@example.org>;tag=b1")
        self.assertEqual(duplicate.to.tag, "b1")
        self.assertIsNone(message.to.tag)
        self.assertIs(duplicate.headers._parsed["From"], message.headers._parsed["From"])

    def test_shared_values_never_change_through_a_message(self) -> None:
        """Two messages with the same From share its parse; changing one's copy changes neither."""
        first, second = parse_message(self.INVITE), parse_message(self.INVITE)
        caller = first.from_
        caller.parameters["tag"] = "changed"
        caller.uri.user = "mallory"  # type: ignore[union-attr]
        self.assertEqual(second.from_.tag, "a1")
        self.assertEqual(str(second.from_.uri), "sip:alice@example.org")
        self.assertIs(first.headers._parsed["From"], second.headers._parsed["From"])

    def test_the_shared_table_is_bounded(self) -> None:
        """A flood of distinct values keeps at most MAX_ENTRIES, and no text longer than MAX_TEXT."""
        table = message_module._ADDRESSES
        for number in range(table.MAX_ENTRIES + 50):
            message_module._shared_address(f"<sip:u{number}@example.org>", "From")
        self.assertLessEqual(len(table), table.MAX_ENTRIES)
        long_value = "<sip:" + "x" * table.MAX_TEXT + "@example.org>"
        message_module._shared_address(long_value, "From")
        self.assertNotIn(long_value, table)

    def test_a_bad_value_is_refused_every_time_and_never_kept(self) -> None:
        text = "<sip:alice@example.org"
        for _ in range(2):
            with self.assertRaises(SipParseError):
                message_module._shared_address(text, "From")
        self.assertNotIn(text, message_module._ADDRESSES)

    def test_a_response_shares_its_request_vias(self) -> None:
        """The Vias a response carries back are the request's, parsed once for both."""
        request = parse_message(self.INVITE)
        assert isinstance(request, Request)
        response = parse_message(make_response(request, 200, "OK").to_bytes())
        self.assertIs(response.headers._parsed["Via"][0], request.headers._parsed["Via"][0])
        changed = response.via
        changed.parameters["received"] = "203.0.113.9"
        self.assertNotIn("received", request.via.parameters)
