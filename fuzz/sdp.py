"""
Fuzz the media relay's SDP reader and writer (``p2psip.media.sdp``), and
the media anchor that uses them (``p2psip.media.anchor``).

The first byte picks the mode.  Below 128 it also picks the relay ports,
and the rest is one SDP body, treated as the media anchor treats a
party's offer or answer: ``parse_sdp``, then ``rewrite_sdp`` with relay
ports for every enabled stream (None for a disabled one, as
``p2psip.media.sessions`` gives them).

* ``parse_sdp`` may raise only :class:`SdpError`, with status 400 or 488
  and a reason that fits a SIP reason phrase (one short line).
* What parses is safe for the relay to use: every stream's ``line`` is its
  ``m=`` line, and every RTP and RTCP destination is an IP address, not
  the unspecified one (0.0.0.0 reaches the relay's own host), with a port
  1..65535 (a port outside it makes every datagram sent there raise in
  the relay; an IPv6 address, on its IPv4 sockets, too).
* ``rewrite_sdp`` refuses (488) exactly the bodies ``refuse_unrelayable``
  refuses, and otherwise writes a body that parses again with the same
  streams, each enabled one sent to the relay's address and ports, the
  disabled ones still disabled, no ICE candidates left in relayed
  streams, and the origin line untouched; rewriting that body again with
  the same ports gives the same bytes.

From 128 up the rest is an offer and an answer, split at the first NUL
(which no SDP body holds), for a call through a ``MediaAnchor`` that
relays every call: the INVITE's offer may be refused only with the
proxy's own error (``SipParseError``, 400, 488 or 503), the 200's answer
and the ACK never raise, every relay leg is pointed at nothing or at an
IPv4 address and a port 1..65535 (what the relay's sockets can send to),
and after the BYE no port or socket is left.

Seeds: the realistic bodies of ``tests/media/sdp_samples/`` (audio and
video, ``a=rtcp``, ``rtcp-mux``, ICE and BUNDLE, IPv6 ``c=``, port 0,
hold, T.38) and the SDP bodies of the RFC 4475 torture messages in the
shared test data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

from twisted.internet.task import Clock

# What the anchor imports but this harness does not aim at (the SIP stack,
# which has its own harness, and the overlay) is imported before the
# instrumentation starts: it stays uninstrumented, which keeps the start
# quick and the coverage feedback on the media code.
import p2psip.media.directory
import p2psip.sip.proxy  # noqa: F401
from fuzz.common import HarnessFailure, instrumented, main, shared_files

with instrumented():
    from p2psip.media.anchor import MediaAnchor, MediaPolicy
    from p2psip.media.relay import Leg, PortPool
    from p2psip.media.sdp import (
        MAX_SDP_BYTES,
        RelayPorts,
        SdpError,
        SessionDescription,
        is_private_address,
        parse_sdp,
        refuse_unrelayable,
        rewrite_sdp,
    )
    from p2psip.media.sessions import RelaySessions
    from p2psip.sip.errors import SipParseError
    from p2psip.sip.message import Request, Response, parse_message
    from p2psip.sip.transaction import Hop
    from p2psip.sip.uri import parse_uri

RELAY = "198.51.100.7"
SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "media" / "sdp_samples"
_ICE = ("a=candidate:", "a=remote-candidates:", "a=ice-lite")


def check_error(error: SdpError) -> None:
    if error.status not in (400, 488):
        raise HarnessFailure(f"SdpError with status {error.status}: {error.reason}")
    if len(error.reason) > 120 or not error.reason.isprintable():
        raise HarnessFailure(f"SdpError reason unfit for a reason phrase: {error.reason!r}")


def check_destination(destination: tuple[str, int] | None, what: str) -> None:
    if destination is None:
        return
    host, port = destination
    # A ValueError here is a crash: parse_sdp checked the address.
    if ipaddress.ip_address(host).is_unspecified:
        raise HarnessFailure(f"{what} destination {host} is the unspecified address")
    if not 1 <= port <= 65535:
        raise HarnessFailure(f"{what} destination port {port} cannot be sent to")
    if not isinstance(is_private_address(host), bool):
        raise HarnessFailure("is_private_address answered something else than a bool")


def check_parsed(description: SessionDescription) -> None:
    for stream in description.streams:
        if not description.lines[stream.line].startswith("m="):
            raise HarnessFailure(f"stream line {stream.line} is no m= line")
        if not stream.line < stream.end <= len(description.lines):
            raise HarnessFailure(f"stream section {stream.line}..{stream.end} out of the body")
        check_destination(description.rtp_destination(stream), "RTP")
        check_destination(description.rtcp_destination(stream), "RTCP")


def relay_ports(description: SessionDescription, base: int) -> list[RelayPorts | None]:
    return [
        RelayPorts(base + 2 * index, base + 2 * index + 1) if stream.enabled else None
        for index, stream in enumerate(description.streams)
    ]


def check_rewritten(
    description: SessionDescription, ports: list[RelayPorts | None], body: bytes
) -> None:
    try:
        again = parse_sdp(body)
    except SdpError as e:
        if len(body) > MAX_SDP_BYTES:
            return  # pointing streams at the relay can lengthen a body past the limit
        raise HarnessFailure(f"the rewritten body does not parse ({e.reason}): {body!r}") from e
    if len(again.streams) != len(description.streams):
        raise HarnessFailure("rewriting changed the number of streams")
    for before, after, entry in zip(description.streams, again.streams, ports, strict=True):
        if (before.media, before.proto, before.formats) != (
            after.media,
            after.proto,
            after.formats,
        ):
            raise HarnessFailure(f"rewriting changed a stream: {before!r} -> {after!r}")
        if entry is None:
            if after.enabled:
                raise HarnessFailure("rewriting enabled a disabled stream")
            continue
        rtcp = entry.rtp if after.rtcp_mux else entry.rtcp
        if (again.rtp_destination(after), again.rtcp_destination(after)) != (
            (RELAY, entry.rtp),
            (RELAY, rtcp),
        ):
            raise HarnessFailure(f"a relayed stream is not sent to the relay: {after!r}")
        if any(line.startswith(_ICE) for line in again.lines[after.line : after.end]):
            raise HarnessFailure("an ICE candidate is left in a relayed stream")
    origin = [line for line in description.lines if line.startswith("o=")]
    if origin != [line for line in again.lines if line.startswith("o=")]:
        raise HarnessFailure("rewriting changed the origin line")
    if rewrite_sdp(again, RELAY, ports) != body:
        raise HarnessFailure("rewriting a rewritten body changed it")


class Opener:
    """Opens no socket: counts the pairs of legs opened and not yet closed."""

    def __init__(self) -> None:
        self.open = 0
        self.legs: list[Leg] = []

    def open_pair(self, first: Leg, second: Leg) -> Opener:
        self.open += 1
        self.legs += (first, second)
        return self

    def close(self) -> None:
        self.open -= 1


CALLER = Hop("UDP", "203.0.113.9", 31000)
CALLEE = [(parse_uri("sip:bob@192.168.1.30:5060"), Hop("UDP", "203.0.113.40", 40123))]
HEADERS = (
    "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKfz;received=203.0.113.9;rport=31000\r\n"
    "Max-Forwards: 70\r\nFrom: <sip:alice@p2psip.test>;tag=a\r\nTo: <sip:bob@p2psip.test>{tag}\r\n"
    "Call-ID: fuzz\r\nCSeq: 1 {method}\r\n"
)


def message(start: str, method: str, sdp: bool, tag: str = "") -> Request | Response:
    head = start + HEADERS.format(method=method, tag=tag)
    if sdp:
        head += "Content-Type: application/sdp\r\n"
    return parse_message(f"{head}Content-Length: 0\r\n\r\n".encode())


# Parsed once (the SIP parser has its own harness); each call gets copies with its bodies.
INVITE = message("INVITE sip:bob@p2psip.test SIP/2.0\r\n", "INVITE", True)
OK = message("SIP/2.0 200 OK\r\n", "INVITE", True, tag=";tag=b")
ACK = message("ACK sip:bob@192.168.1.30 SIP/2.0\r\n", "ACK", False, tag=";tag=b")
BYE = message("BYE sip:bob@192.168.1.30 SIP/2.0\r\n", "BYE", False, tag=";tag=b")
assert isinstance(INVITE, Request) and isinstance(OK, Response)
assert isinstance(ACK, Request) and isinstance(BYE, Request)


def check_legs(opener: Opener) -> None:
    for leg in opener.legs:
        if leg.signalled is None:
            continue
        host, port = leg.signalled
        ip = ipaddress.ip_address(host)
        if ip.version != 4 or ip.is_unspecified or not 1 <= port <= 65535:
            raise HarnessFailure(f"a relay leg is pointed where it cannot send: {leg.signalled}")


def call(offer: bytes, answer: bytes) -> None:
    """One call through an anchor that relays every call: offer, answer, ACK, BYE."""
    opener = Opener()
    sessions = RelaySessions(PortPool(40000, 40127), opener)
    anchor = MediaAnchor(sessions, MediaPolicy.ALWAYS, RELAY, Clock())
    invite = Request(INVITE.method, INVITE.uri.copy(), INVITE.headers.copy(), offer)
    try:
        anchor.request_forwarding(invite, CALLER, CALLEE)
    except SipParseError as e:
        if e.status not in (400, 488, 503):
            raise HarnessFailure(f"the anchor refused an offer with {e.status}") from e
    check_legs(opener)
    anchor.response_forwarding(Response(OK.status, OK.reason, OK.headers.copy(), answer))
    check_legs(opener)
    anchor.ack_forwarding(ACK)
    anchor.request_forwarding(BYE, CALLER, CALLEE)
    if len(sessions) or sessions.pool.in_use or opener.open:
        raise HarnessFailure("a call left relay ports or sockets behind")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] >= 128:
        offer, _, answer = data[1:].partition(b"\x00")
        call(offer, answer)
        return
    base, body = 1024 + 200 * data[0], data[1:]
    try:
        description = parse_sdp(body)
    except SdpError as e:
        check_error(e)
        return
    check_parsed(description)
    ports = relay_ports(description, base)
    try:
        refuse_unrelayable(description)
        refused = None
    except SdpError as e:
        check_error(e)
        refused = e
    try:
        rewritten = rewrite_sdp(description, RELAY, ports)
    except SdpError as e:
        check_error(e)
        if refused is None or e.status != 488:
            raise HarnessFailure(f"rewrite_sdp refused what the relay accepts: {e.reason}") from e
        return
    if refused is not None:
        raise HarnessFailure(f"rewrite_sdp wrote what the relay refuses: {refused.reason}")
    check_rewritten(description, ports, rewritten)


def torture_bodies() -> Iterator[bytes]:
    """The bodies of the RFC 4475 messages that carry SDP (the parser need not accept them)."""
    for torture in shared_files("sip-torture", "*.dat"):
        head, separator, body = torture.partition(b"\r\n\r\n")
        if separator and b"application/sdp" in head.lower():
            yield body


def seeds() -> Iterator[bytes]:
    samples = [path.read_bytes() for path in sorted(SAMPLES.glob("*.sdp"))]
    for number, sample in enumerate(samples):
        yield bytes([number]) + sample
        # A call offered with this sample and answered with the next one.
        yield bytes([128 + number]) + sample + b"\x00" + samples[(number + 1) % len(samples)]
    for body in torture_bodies():
        yield b"\x00" + body


if __name__ == "__main__":
    main(test_one_input, seeds)
