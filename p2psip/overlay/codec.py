"""
Bounds-checked primitives for RELOAD's TLS-style presentation language.

RFC 6940 section 6.3 describes every structure in the TLS presentation
language (RFC 5246 section 4): big-endian unsigned integers of 8, 16, 24, 32
and 64 bits, and variable-length vectors ``opaque x<0..2^N-1>`` whose byte
length travels in front of them in the smallest number of bytes that can
hold 2^N-1.  Vectors of structures use the same byte-length prefix, so a
decoder must count bytes, never items.

Everything that reads untrusted bytes goes through :class:`Reader`, which
compares every length with the bytes that remain (and with the configured
:class:`Limits`) *before* it slices or allocates, and raises only
:class:`DecodeError`.  :class:`Writer` is its mirror for encoding; encoding
a value that cannot be represented is a programming error and raises
``ValueError``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from attrs import frozen

__all__ = [
    "DEFAULT_LIMITS",
    "DecodeError",
    "Limits",
    "Reader",
    "UnknownKindError",
    "Writer",
]


class DecodeError(ValueError):
    """Bytes from the network do not form a valid RELOAD structure."""


class UnknownKindError(DecodeError):
    """
    A body refers to kinds whose data model this node does not know.

    Store, Fetch and Stat bodies cannot be parsed without the data model of
    each kind, so the node answers Error_Unknown_Kind and names ``kinds``
    (RFC 6940 s6.4.2.1/7.4.1.2).
    """

    def __init__(self, kinds: Iterable[int]) -> None:
        self.kinds: tuple[int, ...] = tuple(kinds)
        super().__init__("unknown kinds: " + ", ".join(str(kind) for kind in self.kinds))


@frozen
class Limits:
    """Caps on sizes and counts that an attacker could otherwise inflate."""

    max_message_bytes: int = 1_048_576
    max_list_items: int = 1024
    max_via: int = 64
    max_destinations: int = 64
    max_certificates: int = 8


DEFAULT_LIMITS = Limits()

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_WIDTH_MAX = {1: 0xFF, 2: 0xFFFF, 3: 0xFFFFFF, 4: 0xFFFFFFFF}


class Reader:
    """
    A cursor over ``data[offset:end]`` that never reads past ``end``.

    Nested vectors get their own Reader from :meth:`vector`, bounded by the
    vector's length prefix, so a structure inside a vector cannot consume
    the bytes of its neighbour.
    """

    __slots__ = ("data", "offset", "end", "limits")

    def __init__(
        self,
        data: bytes,
        offset: int = 0,
        end: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.data = data
        self.offset = offset
        self.end = len(data) if end is None else end
        self.limits = limits

    def remaining(self) -> int:
        """How many bytes are left before the end of this reader."""
        return self.end - self.offset

    def at_end(self) -> bool:
        """True when every byte has been consumed."""
        return self.offset >= self.end

    def expect_end(self, what: str) -> None:
        """Fail unless every byte has been consumed: trailing bytes are invalid."""
        if self.offset != self.end:
            raise DecodeError(f"{self.end - self.offset} trailing bytes after {what}")

    # The readers below are on every message's path: each inlines its bounds
    # check instead of calling a helper, and the errors say the same thing.

    def _short(self, count: int, what: str) -> DecodeError:
        return DecodeError(f"{what} needs {count} bytes but only {self.end - self.offset} remain")

    def _need(self, count: int, what: str) -> int:
        start = self.offset
        if count > self.end - start:
            raise self._short(count, what)
        self.offset = start + count
        return start

    def u8(self, what: str = "uint8") -> int:
        """One unsigned byte."""
        start = self.offset
        if start >= self.end:
            raise self._short(1, what)
        self.offset = start + 1
        return self.data[start]

    def u16(self, what: str = "uint16") -> int:
        """A big-endian 16-bit unsigned integer."""
        start = self.offset
        if start + 2 > self.end:
            raise self._short(2, what)
        self.offset = start + 2
        data = self.data
        return (data[start] << 8) | data[start + 1]

    def u24(self, what: str = "uint24") -> int:
        """A big-endian 24-bit unsigned integer."""
        start = self._need(3, what)
        return int.from_bytes(self.data[start : start + 3], "big")

    def u32(self, what: str = "uint32") -> int:
        """A big-endian 32-bit unsigned integer."""
        start = self.offset
        if start + 4 > self.end:
            raise self._short(4, what)
        self.offset = start + 4
        return int(_U32.unpack_from(self.data, start)[0])

    def u64(self, what: str = "uint64") -> int:
        """A big-endian 64-bit unsigned integer."""
        start = self.offset
        if start + 8 > self.end:
            raise self._short(8, what)
        self.offset = start + 8
        return int(_U64.unpack_from(self.data, start)[0])

    def boolean(self, what: str = "Boolean") -> bool:
        """RFC 6940's ``Boolean``: exactly 0 or 1, so re-encoding is byte-identical."""
        value = self.u8(what)
        if value > 1:
            raise DecodeError(f"{what} must be 0 or 1, not {value}")
        return value == 1

    def raw(self, count: int, what: str = "field") -> bytes:
        """Exactly ``count`` bytes."""
        start = self._need(count, what)
        return self.data[start : start + count]

    def id128(self, what: str = "identifier") -> int:
        """A 128-bit Node-ID: 16 big-endian bytes."""
        start = self.offset
        if start + 16 > self.end:
            raise self._short(16, what)
        self.offset = start + 16
        return int.from_bytes(self.data[start : start + 16], "big")

    def _length(self, width_bytes: int, what: str) -> int:
        """A vector's length prefix, checked against the bytes left; the offset moves past it."""
        start = self.offset
        end = self.end
        data = self.data
        if start + width_bytes > end:
            raise self._short(width_bytes, what)
        if width_bytes == 1:
            length = data[start]
        elif width_bytes == 2:
            length = (data[start] << 8) | data[start + 1]
        elif width_bytes == 4:
            length = int(_U32.unpack_from(data, start)[0])
        elif width_bytes == 3:
            length = int.from_bytes(data[start : start + 3], "big")
        else:
            raise ValueError(f"unsupported length width {width_bytes}")
        start += width_bytes
        self.offset = start
        # Checked here, before anything is sliced: a length past the bytes
        # we hold (or past the message limit) is garbage, not a reason to wait.
        if length > end - start:
            raise DecodeError(f"{what} claims {length} bytes but only {end - start} remain")
        if length > self.limits.max_message_bytes:
            raise DecodeError(f"{what} of {length} bytes exceeds the message limit")
        return length

    def opaque(self, width_bytes: int, what: str = "opaque") -> bytes:
        """An ``opaque x<0..2^N-1>`` vector whose length prefix is ``width_bytes`` wide."""
        length = self._length(width_bytes, what)
        start = self.offset
        self.offset = start + length
        return self.data[start : start + length]

    def vector(self, width_bytes: int, what: str = "vector") -> Reader:
        """
        A Reader bounded by a length-prefixed vector; this reader skips past it.

        The caller decodes items from the returned reader until ``at_end()``.
        """
        length = self._length(width_bytes, what)
        start = self.offset
        self.offset = start + length
        return Reader(self.data, start, start + length, self.limits)

    def fixed(self, count: int, what: str = "struct") -> Reader:
        """A Reader over the next ``count`` bytes (a structure with its own length field)."""
        start = self._need(count, what)
        return Reader(self.data, start, start + count, self.limits)

    def check_count(self, count: int, limit: int, what: str) -> None:
        """Fail when a list grows past its limit; called as each item is decoded."""
        if count > limit:
            raise DecodeError(f"more than {limit} items in {what}")


class Writer:
    """Accumulates the encoding of a structure; values are range-checked."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def getvalue(self) -> bytes:
        """The bytes written so far."""
        return bytes(self._buffer)

    def __len__(self) -> int:
        return len(self._buffer)

    @staticmethod
    def _check(value: int, bits: int, what: str) -> None:
        if not 0 <= value < (1 << bits):
            raise ValueError(f"{what} {value!r} does not fit in {bits} unsigned bits")

    def u8(self, value: int, what: str = "uint8") -> Writer:
        if not 0 <= value <= 0xFF:
            self._check(value, 8, what)
        self._buffer.append(value)
        return self

    def u16(self, value: int, what: str = "uint16") -> Writer:
        if not 0 <= value <= 0xFFFF:
            self._check(value, 16, what)
        self._buffer += _U16.pack(value)
        return self

    def u24(self, value: int, what: str = "uint24") -> Writer:
        self._check(value, 24, what)
        self._buffer += value.to_bytes(3, "big")
        return self

    def u32(self, value: int, what: str = "uint32") -> Writer:
        if not 0 <= value <= 0xFFFFFFFF:
            self._check(value, 32, what)
        self._buffer += _U32.pack(value)
        return self

    def u64(self, value: int, what: str = "uint64") -> Writer:
        if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
            self._check(value, 64, what)
        self._buffer += _U64.pack(value)
        return self

    def boolean(self, value: bool) -> Writer:
        self._buffer.append(1 if value else 0)
        return self

    def raw(self, data: bytes) -> Writer:
        self._buffer += data
        return self

    def opaque(self, width_bytes: int, data: bytes, what: str = "opaque") -> Writer:
        """Write ``data`` behind a length prefix ``width_bytes`` wide."""
        length = len(data)
        buffer = self._buffer
        if width_bytes == 1 and length <= 0xFF:
            buffer.append(length)
        elif width_bytes == 2 and length <= 0xFFFF:
            buffer += _U16.pack(length)
        elif width_bytes == 4 and length <= 0xFFFFFFFF:
            buffer += _U32.pack(length)
        else:
            maximum = _WIDTH_MAX[width_bytes]
            if length > maximum:
                raise ValueError(f"{what} of {length} bytes exceeds <0..{maximum}>")
            buffer += length.to_bytes(width_bytes, "big")
        buffer += data
        return self

    def id128(self, value: int, what: str = "identifier") -> Writer:
        """A 128-bit Node-ID as 16 big-endian bytes."""
        self._check(value, 128, what)
        self._buffer += value.to_bytes(16, "big")
        return self
