"""
Attach and AppAttach bodies (RFC 6940 s6.5.1, s6.5.2), the way nodes learn
where to open a direct connection to each other.

    struct {
      opaque             ufrag<0..2^8-1>;
      opaque             password<0..2^8-1>;
      opaque             role<0..2^8-1>;
      IceCandidate       candidates<1..2^16-1>;
      Boolean            send_update;
    } AttachReqAns;

    struct {
      opaque             ufrag<0..2^8-1>;
      opaque             password<0..2^8-1>;
      uint16             application;
      opaque             role<0..2^8-1>;
      IceCandidate       candidates<1..2^16-1>;
    } AppAttachReq / AppAttachAns;

    struct {
      IpAddressPort      addr_port;
      OverlayLinkType    overlay_link;
      opaque             foundation<0..255>;
      uint32             priority;
      CandType           type;
      select (type) { case host: ; case srflx, prflx, relay: IpAddressPort rel_addr_port; };
      IceExtension       extensions<0..2^16-1>;
    } IceCandidate;

    struct { AddressType type; uint8 length;
             select (type) { case ipv4_address: uint32 addr; uint16 port;
                             case ipv6_address: uint128 addr; uint16 port; }; } IpAddressPort;

p2psip connects links without ICE (overlay link type TLS-TCP-FH-NO-ICE:
the requester connects straight to the answer's host candidate; NAT
traversal is the mediator's job), so only host candidates are produced,
but every candidate type is decoded.
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum
from typing import ClassVar

from attrs import frozen

from p2psip.overlay.codec import DEFAULT_LIMITS, DecodeError, Limits, Reader, Writer


class AddressType(IntEnum):
    IPV4 = 1
    IPV6 = 2


class OverlayLinkType(IntEnum):
    DTLS_UDP_SR = 1
    DTLS_UDP_SR_NO_ICE = 3
    TLS_TCP_FH_NO_ICE = 4


class CandidateType(IntEnum):
    HOST = 1
    SRFLX = 2
    PRFLX = 3
    RELAY = 4


@frozen
class IceCandidate:
    host: str
    port: int
    overlay_link: int = OverlayLinkType.TLS_TCP_FH_NO_ICE
    foundation: bytes = b"1"
    priority: int = 1
    type: int = CandidateType.HOST
    related_host: str | None = None
    related_port: int | None = None


def _write_address(writer: Writer, host: str, port: int) -> None:
    address = ipaddress.ip_address(host)
    if address.version == 4:
        writer.u8(AddressType.IPV4).u8(6).raw(address.packed).u16(port)
    else:
        writer.u8(AddressType.IPV6).u8(18).raw(address.packed).u16(port)


def _read_address(reader: Reader) -> tuple[str, int]:
    kind = reader.u8("address type")
    body = reader.vector(1, "IpAddressPort")
    if kind == AddressType.IPV4:
        raw = body.raw(4, "IPv4 address")
    elif kind == AddressType.IPV6:
        raw = body.raw(16, "IPv6 address")
    else:
        raise DecodeError(f"unknown address type {kind}")
    port = body.u16("port")
    body.expect_end("IpAddressPort")
    return str(ipaddress.ip_address(raw)), port


def _write_candidates(writer: Writer, candidates: tuple[IceCandidate, ...]) -> None:
    inner = Writer()
    for candidate in candidates:
        _write_address(inner, candidate.host, candidate.port)
        inner.u8(candidate.overlay_link)
        inner.opaque(1, candidate.foundation)
        inner.u32(candidate.priority)
        inner.u8(candidate.type)
        if candidate.type != CandidateType.HOST:
            _write_address(inner, candidate.related_host or "0.0.0.0", candidate.related_port or 0)
        inner.opaque(2, b"")  # no ICE extensions
    writer.opaque(2, inner.getvalue(), "candidates")


def _read_candidates(reader: Reader) -> tuple[IceCandidate, ...]:
    body = reader.vector(2, "candidates")
    candidates: list[IceCandidate] = []
    while not body.at_end():
        body.check_count(len(candidates) + 1, body.limits.max_list_items, "candidates")
        host, port = _read_address(body)
        overlay_link = body.u8("overlay link type")
        foundation = body.opaque(1, "foundation")
        priority = body.u32("priority")
        kind = body.u8("candidate type")
        related_host = related_port = None
        if kind not in tuple(CandidateType):
            raise DecodeError(f"unknown candidate type {kind}")
        if kind != CandidateType.HOST:
            related_host, related_port = _read_address(body)
        body.vector(2, "ICE extensions")
        candidates.append(
            IceCandidate(host, port, overlay_link, foundation, priority, kind, related_host, related_port)
        )
    if not candidates:
        raise DecodeError("an Attach needs at least one candidate")
    return tuple(candidates)


@frozen
class AttachReqAns:
    """Body of AttachReq and AttachAns (the same structure)."""

    candidates: tuple[IceCandidate, ...]
    ufrag: bytes = b""
    password: bytes = b""
    role: bytes = b"passive"
    send_update: bool = False
    CODE: ClassVar[int] = 3

    def encode(self) -> bytes:
        writer = Writer()
        writer.opaque(1, self.ufrag).opaque(1, self.password).opaque(1, self.role)
        _write_candidates(writer, self.candidates)
        writer.boolean(self.send_update)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> AttachReqAns:
        reader = Reader(data, limits=limits)
        ufrag = reader.opaque(1, "ufrag")
        password = reader.opaque(1, "password")
        role = reader.opaque(1, "role")
        candidates = _read_candidates(reader)
        send_update = reader.boolean("send_update")
        reader.expect_end("AttachReqAns")
        return cls(candidates, ufrag, password, role, send_update)


@frozen
class AppAttach:
    """Body of AppAttachReq and AppAttachAns (the same structure)."""

    application: int
    candidates: tuple[IceCandidate, ...]
    ufrag: bytes = b""
    password: bytes = b""
    role: bytes = b"passive"
    CODE: ClassVar[int] = 29

    def encode(self) -> bytes:
        writer = Writer()
        writer.opaque(1, self.ufrag).opaque(1, self.password).u16(self.application)
        writer.opaque(1, self.role)
        _write_candidates(writer, self.candidates)
        return writer.getvalue()

    @classmethod
    def decode(cls, data: bytes, limits: Limits = DEFAULT_LIMITS) -> AppAttach:
        reader = Reader(data, limits=limits)
        ufrag = reader.opaque(1, "ufrag")
        password = reader.opaque(1, "password")
        application = reader.u16("application")
        role = reader.opaque(1, "role")
        candidates = _read_candidates(reader)
        reader.expect_end("AppAttach")
        return cls(application, candidates, ufrag, password, role)
