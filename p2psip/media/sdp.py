"""
Session descriptions (RFC 8866) as far as a media relay needs them: read
where each stream's RTP and RTCP go, and write a copy that sends them to
the relay instead.

An SDP body is lines of ``<type>=<value>``: a session part (``v=``, ``o=``,
``s=``, an optional ``c=``, ``t=``, attributes) then one section per media
stream, each opened by ``m=<media> <port> <proto> <formats>`` with its own
optional ``c=`` and attributes.  A stream's RTP goes to its ``m=`` port at
the stream's ``c=`` address (the media-level one, else the session one);
its RTCP to ``a=rtcp:<port> [IN IP4 <address>]`` (RFC 3605) when given,
else to the RTP port plus one (RFC 3550 s11), or to the RTP port itself
with ``a=rtcp-mux`` (RFC 5761).  A port of 0 disables the stream (RFC
3264 s6): it stays in the body, with port 0, so the answer keeps one
section per offered stream.

:func:`parse_sdp` reads untrusted bytes into a :class:`SessionDescription`
and raises :class:`SdpError` for anything it cannot read or would not
relay (the proxy answers with the error's status: 400 for a body that is
no SDP, 488 Not Acceptable Here for one the relay cannot serve: IPv6 or
multicast addresses, port ranges ``m=audio 49170/2``).
:func:`rewrite_sdp` writes the description with every enabled stream
pointed at relay ports; lines it does not understand are kept as they
were.  ICE candidates (``a=candidate``, RFC 8839) are removed from relayed
streams: they name the party's own addresses, which would take the media
around the relay.

Sans-IO: bytes in, values out; nothing here imports Twisted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from attrs import frozen

#: The largest body read (a busy offer with video and many codecs is ~2 KB).
MAX_SDP_BYTES = 16384
#: The most lines and media streams accepted in one body.
MAX_LINES = 256
MAX_STREAMS = 16
#: Attributes naming the party's own transport addresses (RFC 8839), dropped when relayed.
_ICE_ATTRIBUTES = ("candidate:", "remote-candidates:", "ice-lite")
#: Addresses behind a NAT: RFC 1918, RFC 6598 shared space, link-local, unique-local.
_NAT_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


class SdpError(ValueError):
    """
    A body that is not SDP (``status`` 400), or one the relay cannot serve (488).

    ``reason`` fits a SIP reason phrase.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@frozen
class Connection:
    """A ``c=IN IP4 <address>`` line's address (``IN IP6`` is read but never relayed)."""

    address_type: str
    address: str

    @property
    def is_ipv6(self) -> bool:
        return self.address_type == "IP6"


@frozen
class MediaStream:
    """
    One ``m=`` section: where its RTP and RTCP go.

    ``line`` is the index of the ``m=`` line in :attr:`SessionDescription.lines`,
    ``end`` the index after the section's last line.
    """

    media: str
    port: int
    proto: str
    formats: str
    connection: Connection | None
    rtcp_port: int | None
    rtcp_address: str | None
    rtcp_mux: bool
    line: int
    end: int

    @property
    def enabled(self) -> bool:
        """RFC 3264 s6: port 0 declines (or disables) the stream."""
        return self.port != 0


@frozen
class SessionDescription:
    """A parsed body: its lines (as they were, without line ends) and its streams."""

    lines: tuple[str, ...]
    connection: Connection | None
    streams: tuple[MediaStream, ...]

    def stream_connection(self, stream: MediaStream) -> Connection | None:
        """The address a stream's RTP goes to: its own ``c=``, else the session's."""
        return stream.connection or self.connection

    def rtp_destination(self, stream: MediaStream) -> tuple[str, int] | None:
        """
        Where the party wants the stream's RTP: None for a disabled stream,
        or one on hold the RFC 2543 way (``c=IN IP4 0.0.0.0``), which must
        not be sent anything.
        """
        connection = self.stream_connection(stream)
        if not stream.enabled or connection is None or _unspecified(connection.address):
            return None
        return connection.address, stream.port

    def rtcp_destination(self, stream: MediaStream) -> tuple[str, int] | None:
        """Where the party wants the stream's RTCP (RFC 3605, RFC 3550 s11, RFC 5761)."""
        rtp = self.rtp_destination(stream)
        if rtp is None:
            return None
        if stream.rtcp_mux:
            return rtp
        host = stream.rtcp_address or rtp[0]
        if _unspecified(host):
            return None  # a=rtcp:9 IN IP4 0.0.0.0, as WebRTC offers: no RTCP to send
        return host, stream.rtcp_port if stream.rtcp_port is not None else rtp[1] + 1


def _unspecified(address: str) -> bool:
    """0.0.0.0 or :: however written (::0, 0:0::0): nothing may be sent there (Linux: to this host)."""
    return ipaddress.ip_address(address).is_unspecified


def is_private_address(address: str) -> bool:
    """
    Whether ``address`` cannot be reached from the Internet: RFC 1918,
    shared (RFC 6598), link-local, unique-local; a sign that the party sits
    behind a NAT.  Loopback is not: a phone on the super-node's own host
    needs no relay.  A name that is no IP address counts as not private.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _NAT_NETWORKS if network.version == ip.version)


def _split_lines(body: bytes) -> list[str]:
    if len(body) > MAX_SDP_BYTES:
        raise SdpError(f"SDP body over {MAX_SDP_BYTES} bytes", 488)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SdpError("SDP body is not UTF-8") from None
    if "\x00" in text:
        raise SdpError("SDP body holds a NUL character")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LINES:
        raise SdpError(f"SDP body over {MAX_LINES} lines", 488)
    return lines


def _port(text: str, what: str) -> int:
    # isascii: str.isdigit() also holds for digits int() refuses ("²") or reads ("٤").
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > 65535:
        raise SdpError(f"bad {what} port in SDP")
    return int(text)


def _connection(value: str) -> Connection:
    fields = value.split(" ")
    if len(fields) != 3 or fields[0] != "IN":
        raise SdpError("bad c= line in SDP")
    address_type, address = fields[1], fields[2]
    if address_type not in ("IP4", "IP6"):
        raise SdpError(f"unknown address type {address_type[:8]!r} in SDP c= line", 488)
    if "/" in address:
        raise SdpError("multicast SDP c= addresses are not relayed", 488)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        # RFC 8866 allows a domain name; a relay forwards to addresses only.
        raise SdpError("SDP c= address is no IP address", 488) from None
    if (ip.version == 6) != (address_type == "IP6"):
        raise SdpError("SDP c= address does not match its address type")
    if ip.is_multicast:
        raise SdpError("multicast SDP c= addresses are not relayed", 488)
    return Connection(address_type, address)


def _rtcp_attribute(value: str) -> tuple[int, str | None]:
    """``a=rtcp:<port> [IN IP4 <address>]`` (RFC 3605)."""
    fields = value.split(" ")
    port = _port(fields[0], "a=rtcp")
    if len(fields) == 1:
        return port, None
    if len(fields) != 4:
        raise SdpError("bad a=rtcp attribute in SDP")
    return port, _connection(" ".join(fields[1:])).address


def parse_sdp(body: bytes) -> SessionDescription:
    """
    Read an SDP body; every byte is untrusted.

    :raises SdpError: 400 for what is not SDP, 488 for what the relay cannot serve.
    """
    lines = _split_lines(body)
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session_connection: Connection | None = None
    streams: list[MediaStream] = []
    current: dict[str, object] | None = None

    def close(end: int) -> None:
        if current is None:
            return
        streams.append(
            MediaStream(
                media=str(current["media"]),
                port=int(str(current["port"])),
                proto=str(current["proto"]),
                formats=str(current["formats"]),
                connection=current["connection"],  # type: ignore[arg-type]
                rtcp_port=current["rtcp_port"],  # type: ignore[arg-type]
                rtcp_address=current["rtcp_address"],  # type: ignore[arg-type]
                rtcp_mux=bool(current["rtcp_mux"]),
                line=int(str(current["line"])),
                end=end,
            )
        )

    for index, line in enumerate(lines):
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"bad SDP line {index + 1}")
        kind, value = line[0], line[2:]
        if kind == "m":
            close(index)
            if len(streams) >= MAX_STREAMS:
                raise SdpError(f"more than {MAX_STREAMS} media streams in SDP", 488)
            fields = value.split(" ")
            if len(fields) < 4 or not fields[0] or not fields[2]:
                raise SdpError("bad m= line in SDP")
            if "/" in fields[1]:
                raise SdpError("SDP port ranges (m=... PORT/N) are not relayed", 488)
            current = {
                "media": fields[0],
                "port": _port(fields[1], "m="),
                "proto": fields[2],
                "formats": " ".join(fields[3:]),
                "connection": None,
                "rtcp_port": None,
                "rtcp_address": None,
                "rtcp_mux": False,
                "line": index,
            }
        elif kind == "c":
            connection = _connection(value)
            if current is None:
                if session_connection is not None:
                    raise SdpError("two session-level c= lines in SDP")
                session_connection = connection
            else:
                current["connection"] = connection
        elif kind == "a" and current is not None:
            if value.startswith("rtcp:"):
                port, address = _rtcp_attribute(value[len("rtcp:") :])
                current["rtcp_port"], current["rtcp_address"] = port, address
            elif value == "rtcp-mux":
                current["rtcp_mux"] = True
    close(len(lines))
    for stream in streams:
        if stream.enabled and stream.connection is None and session_connection is None:
            raise SdpError("SDP media stream without a c= address")
    description = SessionDescription(tuple(lines), session_connection, tuple(streams))
    for stream in streams:
        # Port 0 or 65536 would make every datagram the relay sends there raise.
        rtcp = description.rtcp_destination(stream)
        if rtcp is not None and not 1 <= rtcp[1] <= 65535:
            raise SdpError(f"bad RTCP port {rtcp[1]} in SDP (a=rtcp, or the m= port plus one)")
    return description


@frozen
class RelayPorts:
    """The relay's ports for one stream: where the other party sends RTP and RTCP."""

    rtp: int
    rtcp: int


def refuse_unrelayable(description: SessionDescription) -> None:
    """
    Refuse a body whose enabled streams the relay cannot serve, before any
    relay leg is pointed at it: the relay's sockets are IPv4, so an IPv6
    RTP address (``c=``) or RTCP address (``a=rtcp:... IN IP6``) is 488.

    :raises SdpError: (488) for such a body.
    """
    for stream in description.streams:
        if not stream.enabled:
            continue
        connection = description.stream_connection(stream)
        rtcp = stream.rtcp_address
        if (connection is not None and connection.is_ipv6) or (rtcp is not None and ":" in rtcp):
            raise SdpError("IPv6 media addresses are not relayed (the relay serves IPv4)", 488)


def rewrite_sdp(
    description: SessionDescription, address: str, ports: Sequence[RelayPorts | None]
) -> bytes:
    """
    The body with each enabled stream sent to ``address`` at ``ports[i]``.

    ``ports`` has one entry per stream, None exactly for the disabled ones
    (port 0), which keep their lines as they were.  The session ``c=`` and
    every media ``c=`` of an enabled stream name the relay; ``m=`` ports and
    ``a=rtcp`` follow ``ports``.  The origin (``o=``) stays: it identifies
    the session, not where media goes.

    :raises SdpError: (488) what :func:`refuse_unrelayable` refuses.
    :raises ValueError: ``ports`` does not match the streams.
    """
    if len(ports) != len(description.streams):
        raise ValueError("one entry of ports per media stream")
    if any((entry is None) == stream.enabled for stream, entry in zip(description.streams, ports)):
        # An enabled stream left out would follow the session c= to the relay.
        raise ValueError("relay ports for every enabled stream and for no disabled one")
    refuse_unrelayable(description)
    try:
        relay_ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"relay address {address!r} is no IP address") from None
    address_type = "IP6" if relay_ip.version == 6 else "IP4"
    relayed = {
        stream.line: entry
        for stream, entry in zip(description.streams, ports, strict=True)
        if entry is not None and stream.enabled
    }
    out: list[str] = []
    section: RelayPorts | None = None
    in_media = False
    for index, line in enumerate(description.lines):
        if line.startswith("m="):
            in_media = True
            section = relayed.get(index)
            if section is not None:
                fields = line[2:].split(" ")
                fields[1] = str(section.rtp)
                line = "m=" + " ".join(fields)
        elif line.startswith("c="):
            if not in_media and relayed:
                line = f"c=IN {address_type} {address}"
            elif in_media and section is not None:
                line = f"c=IN {address_type} {address}"
        elif line.startswith("a=") and in_media and section is not None:
            value = line[2:]
            if value.startswith("rtcp:"):
                line = f"a=rtcp:{section.rtcp}"
            elif value.startswith(_ICE_ATTRIBUTES):
                continue
        out.append(line)
    return ("\r\n".join(out) + "\r\n").encode("utf-8")
