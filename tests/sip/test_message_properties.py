"""Property tests for p2psip.sip.message: hostile input and round trips."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.message import (
    CSeq,
    NameAddress,
    Request,
    SipParseError,
    SipStreamDecoder,
    SipURI,
    Via,
    error_response,
    parse_message,
)
from p2psip.testing import shared_path

TORTURE_NAMES = [
    "wsinv",
    "intmeth",
    "esc01",
    "escnull",
    "longreq",
    "mpart01",
    "inv2543",
    "badinv01",
    "quotbal",
    "scalar02",
    "regescrt",
    "unreason",
    "baddn",
    "multi01",
]


def torture_messages() -> list[bytes]:
    folder = shared_path("testdata", "sip-torture")
    return [(folder / f"{name}.dat").read_bytes() for name in TORTURE_NAMES]


def parse_or_reject(data: bytes) -> None:
    """Parse, touching every typed field; only SipParseError may escape."""
    try:
        message = parse_message(data)
    except SipParseError as e:
        error_response(e)
        return
    message.to_bytes()
    for contact in message.contacts:
        str(contact)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(torture_messages())))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[position:position] = draw(
                st.sampled_from(
                    [
                        b"\r\n",
                        b" ",
                        b"\t",
                        b";",
                        b",",
                        b"<",
                        b">",
                        b'"',
                        b"%",
                        b"\\",
                        b":",
                        b"\x00",
                        b"\xff",
                        b"@",
                        b"\r\n ",
                    ]
                )
            )
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
    return bytes(data)


TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~",
    min_size=1,
    max_size=12,
)
HOST = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
FREE_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20
)


@st.composite
def sip_uris(draw: st.DrawFn) -> SipURI:
    return SipURI(
        host=draw(HOST),
        user=draw(st.none() | FREE_TEXT.filter(bool)),
        port=draw(st.none() | st.integers(1, 65535)),
        scheme=draw(st.sampled_from(["sip", "sips"])),
        parameters=draw(
            st.dictionaries(TOKEN.map(str.lower), st.none() | FREE_TEXT.filter(bool), max_size=3)
        ),
    )


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(TOKEN)
    request = Request(method, draw(sip_uris()), body=draw(st.binary(max_size=200)))
    for _ in range(draw(st.integers(1, 3))):
        via = Via(
            draw(st.sampled_from(["UDP", "TCP", "TLS"])),
            draw(HOST),
            draw(st.none() | st.integers(1, 65535)),
            {"branch": "z9hG4bK" + draw(TOKEN), "rport": None},
        )
        request.headers.add("Via", str(via))
    request.headers.add(
        "From",
        str(NameAddress(draw(sip_uris()), draw(st.none() | FREE_TEXT), {"tag": draw(TOKEN)})),
    )
    request.headers.add("To", str(NameAddress(draw(sip_uris()), draw(st.none() | FREE_TEXT))))
    request.headers.add("Call-ID", draw(TOKEN) + "@" + draw(HOST))
    request.headers.add("CSeq", str(CSeq(draw(st.integers(0, 2**32 - 1)), method)))
    request.headers.add("Max-Forwards", str(draw(st.integers(0, 255))))
    return request


class HostileInputTests(SynchronousTestCase):
    """Nothing but SipParseError comes out of the parser."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=2000))
    def test_random_bytes(self, data: bytes) -> None:
        """Random bytes are rejected with SipParseError or parsed."""
        parse_or_reject(data)

    @settings(max_examples=500, deadline=None)
    @given(mutated())
    def test_mutated_torture_messages(self, data: bytes) -> None:
        """Mutated and truncated torture messages raise only SipParseError."""
        parse_or_reject(data)

    @settings(max_examples=200, deadline=None)
    @given(mutated(), st.lists(st.integers(1, 200), max_size=20))
    def test_stream_chunks(self, data: bytes, cuts: list[int]) -> None:
        """The stream decoder, fed in random chunks, raises only SipParseError."""
        decoder = SipStreamDecoder()
        position = 0
        try:
            for size in cuts + [len(data)]:
                for message in decoder.feed(data[position : position + size]):
                    message.to_bytes()
                position += size
        except SipParseError:
            pass


class RoundTripTests(SynchronousTestCase):
    """Generated messages survive serialisation and parsing."""

    @settings(max_examples=300, deadline=None)
    @given(requests())
    def test_request_round_trip(self, request: Request) -> None:
        """Values read back from the wire equal the values written."""
        parsed = parse_message(request.to_bytes())
        assert isinstance(parsed, Request)
        self.assertEqual((parsed.method, parsed.uri), (request.method, request.uri))
        self.assertEqual(parsed.body, request.body)
        self.assertEqual([str(v) for v in parsed.vias], [str(v) for v in request.vias])
        self.assertEqual(parsed.from_.display_name, request.from_.display_name)
        self.assertEqual(parsed.from_.uri, request.from_.uri)
        self.assertEqual(parsed.to.uri, request.to.uri)
        self.assertEqual(
            (parsed.cseq, parsed.call_id, parsed.max_forwards),
            (request.cseq, request.call_id, request.max_forwards),
        )
        [streamed] = SipStreamDecoder().feed(request.to_bytes())
        self.assertEqual(streamed.to_bytes(), request.to_bytes())


ADDRESS_PIECES = st.sampled_from(
    [
        '"',
        "\\",
        "<",
        ">",
        " ",
        "\t",
        ";",
        "=",
        ",",
        "@",
        ":",
        "sip:",
        "sips:",
        "tel:+1",
        "a",
        "Bob",
        "x.example.org",
        "tag",
        "5060",
        "%41",
        "\x00",
        "é",
        "?",
        "&",
        "[::1]",
        "lr",
        "q=0.5",
        "expires=60",
    ]
)


@st.composite
def name_addr_like(draw: st.DrawFn) -> str:
    """Mostly well-formed name-addrs, sometimes broken, sometimes mutated."""
    display = draw(
        st.sampled_from(
            [
                "",
                '"A B" ',
                '"x\\"y"',
                "Bob ",
                "Bob  Smith",
                '"\u00e9"',
                "Bad,Name ",
                '"open ',
                " ",
                "\t",
                '"a<b" ',
            ]
        )
    )
    uri = draw(
        st.sampled_from(
            [
                "sip:a@b",
                "sip:a@b;lr",
                "sips:u@[::1]:5061",
                "tel:+123",
                "x:y",
                "sip:a b@c",
                "sip:%41@b",
                "sip:a@b?h=v",
                "",
                "sip:a@b:99999",
                "sip:@b",
            ]
        )
    )
    params = draw(
        st.lists(
            st.sampled_from([";tag=1", " ; q = 0.5", ";;", ";x", ';e="q"', ",", " ", ";t=[::1]"]),
            max_size=3,
        )
    )
    text = display + "<" + uri + ">" + "".join(params)
    if draw(st.booleans()):
        position = draw(st.integers(0, len(text)))
        text = text[:position] + draw(ADDRESS_PIECES) + text[position + 1 :]
    return text


class NameAddressFastPathTests(SynchronousTestCase):
    """The one-regex path for common name-addr forms agrees with the general parser."""

    @settings(max_examples=1000, deadline=None)
    @given(st.lists(ADDRESS_PIECES, max_size=14).map("".join) | name_addr_like())
    def test_fast_and_general_agree(self, text: str) -> None:
        """Both paths raise SipParseError, or both give the same display name, URI and parameters."""

        def outcome(parse: object) -> object:
            try:
                address = parse(text, "To")  # type: ignore[operator]
            except SipParseError:
                return "error"
            return (address.display_name, str(address.uri), address.parameters)

        self.assertEqual(outcome(NameAddress.parse), outcome(NameAddress._parse_general))

    def test_common_forms(self) -> None:
        """Quoted and token display names, and none, take the fast path to the same values."""
        for text in (
            '"A \\"B\\"" <sip:a@b>;tag=1',
            "Bob  Smith <sip:bob@x;lr>",
            "<sip:c@d> ; q = 0.5",
        ):
            with self.subTest(text=text):
                fast = NameAddress.parse(text)
                general = NameAddress._parse_general(text, "address")
                self.assertEqual(
                    (fast.display_name, str(fast.uri), fast.parameters),
                    (general.display_name, str(general.uri), general.parameters),
                )
