"""
Fuzz the media relay's SDP reader and writer (``p2psip.media.sdp``).

The first byte picks the relay ports, the rest is one SDP body, treated
as the media anchor treats a party's offer or answer: ``parse_sdp``,
then ``rewrite_sdp`` with relay ports for every enabled stream (None for
a disabled one, as ``p2psip.media.sessions`` gives them).

* ``parse_sdp`` may raise only :class:`SdpError`, with status 400 or 488
  and a reason that fits a SIP reason phrase (one short line).
* What parses is safe for the relay to use: every stream's ``line`` is its
  ``m=`` line, and every RTP and RTCP destination is an IP address with a
  port 1..65535 (a port outside it makes every datagram sent there raise
  in the relay; an IPv6 one, on its IPv4 sockets, too).
* ``rewrite_sdp`` refuses (488) exactly the bodies ``refuse_unrelayable``
  refuses, and otherwise writes a body that parses again with the same
  streams, each enabled one sent to the relay's address and ports, the
  disabled ones still disabled, no ICE candidates left in relayed
  streams, and the origin line untouched; rewriting that body again with
  the same ports gives the same bytes.

Seeds: the realistic bodies of ``tests/media/sdp_samples/`` (audio and
video, ``a=rtcp``, ``rtcp-mux``, ICE and BUNDLE, IPv6 ``c=``, port 0,
hold, T.38) and the SDP bodies of the RFC 4475 torture messages in the
shared test data.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

from fuzz.common import HarnessFailure, instrumented, main, shared_files

with instrumented():
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
    ipaddress.ip_address(host)  # ValueError here is a crash: parse_sdp checked the address
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


def test_one_input(data: bytes) -> None:
    if not data:
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
    for message in shared_files("sip-torture", "*.dat"):
        head, separator, body = message.partition(b"\r\n\r\n")
        if separator and b"application/sdp" in head.lower():
            yield body


def seeds() -> Iterator[bytes]:
    for number, path in enumerate(sorted(SAMPLES.glob("*.sdp"))):
        yield bytes([number]) + path.read_bytes()
    for body in torture_bodies():
        yield b"\x00" + body


if __name__ == "__main__":
    main(test_one_input, seeds)
