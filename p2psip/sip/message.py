"""
SIP messages (RFC 3261 sections 7, 20 and 25): parse and serialise.

Wire format::

    start-line CRLF            Request-Line  "METHOD SP Request-URI SP SIP/2.0"
                               Status-Line   "SIP/2.0 SP 3DIGIT SP Reason-Phrase"
    *(header-name ":" value CRLF)   a line starting with SP/HT continues the
                               previous one (folding, s7.3.1); names are
                               case-insensitive and have compact forms (s7.3.3)
    CRLF
    body                       Content-Length octets on streams (s18.3); on a
                               datagram without Content-Length, the rest

Parsing is eager: :func:`parse_message` checks every header field this
stack relies on (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact,
Expires, Route, Record-Route, Content-Type, Content-Length, Date) so that a
message that parses can be used without further error handling, and a bad
one is answered once, at the transport, with the status carried by
:class:`SipParseError`.  Other header fields stay opaque strings and are
forwarded as received (RFC 4475 section 3.1.1.1).

Bytes stay on the wire: header text is decoded as UTF-8 (undecodable octets
survive as surrogates and are written back unchanged); bodies stay bytes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, Union

import attrs

from p2psip.sip.errors import SipParseError
from p2psip.sip.uri import (
    URI,
    AbsoluteURI,
    SipURI,
    TelURI,
    parse_host,
    parse_port,
    parse_uri,
)

__all__ = [
    "CSeq",
    "Headers",
    "Message",
    "NameAddress",
    "Request",
    "Response",
    "SipParseError",
    "SipStreamDecoder",
    "Via",
    "AbsoluteURI",
    "SipURI",
    "TelURI",
    "URI",
    "canonical_name",
    "error_response",
    "make_request",
    "make_response",
    "parse_message",
    "parse_uri",
    "split_comma_list",
    "check_request_uri_scheme",
    "REASON_PHRASES",
]

SIP_VERSION = "SIP/2.0"
MAX_MESSAGE_BYTES = 65535
"""Whole message (header section and body); over this -> 513 (s18.1.1: UDP's ceiling)."""
MAX_HEADER_BYTES = 16384
"""Header section alone; a stream peer that never ends its headers is cut off here."""
MAGIC_COOKIE = "z9hG4bK"
MAX_UINT32 = 2**32 - 1

KNOWN_METHODS = frozenset(
    "INVITE ACK BYE CANCEL OPTIONS REGISTER PRACK SUBSCRIBE NOTIFY PUBLISH INFO REFER MESSAGE UPDATE".split()
)

# RFC 3261 s7.3.3 and the IANA header field registry.
COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept Accept-Encoding Accept-Language Alert-Info Allow Authentication-Info Authorization "
        "Call-ID Call-Info Contact Content-Disposition Content-Encoding Content-Language "
        "Content-Length Content-Type CSeq Date Error-Info Expires From In-Reply-To Max-Forwards "
        "MIME-Version Min-Expires Organization Path Priority Proxy-Authenticate Proxy-Authorization "
        "Proxy-Require Record-Route Reply-To Require Retry-After Route Server Subject Supported "
        "Timestamp To Unsupported User-Agent Via Warning WWW-Authenticate RSeq RAck Event "
        "Allow-Events Refer-To Referred-By Session-Expires Min-SE Identity Identity-Info "
        "Accept-Contact Reject-Contact Request-Disposition Service-Route Flow-Timer"
    ).split()
}

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(_TOKEN + r"\Z")
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)
_VIA_RE = re.compile(
    r"\s*(" + _TOKEN + r")\s*/\s*(" + _TOKEN + r")\s*/\s*(" + _TOKEN + r")\s+"
    r"(\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9\-.]+)(?:\s*:\s*([0-9]+))?\s*(.*)\Z",
    re.DOTALL,
)
_CSEQ_RE = re.compile(r"\s*([0-9]+)\s+(" + _TOKEN + r")\s*\Z")
_DATE_RE = re.compile(
    r"\s*(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT\s*\Z"
)
_MEDIA_TYPE_RE = re.compile(r"\s*(" + _TOKEN + r")\s*/\s*(" + _TOKEN + r")\s*(;.*)?\Z", re.DOTALL)
_CALL_ID_RE = re.compile(r"[!-~]+\Z")
_LWS = " \t"
# The common name-addr forms in one step: optional quoted or token display
# name, then <URI> (no spaces or angle brackets inside), then parameters.
# Anything else goes through NameAddress._parse_general.
_NAME_ADDR_RE = re.compile(
    r'[ \t]*(?:"((?:[^"\\]|\\.)*)"[ \t]*|(' + _TOKEN + r"(?:[ \t]+" + _TOKEN + r")*)[ \t]*)?"
    r"<([!-;=?-~]+)>(.*)\Z",
    re.DOTALL,
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# One ";name[=value]" with optional LWS around ';' and '='; the value is a
# token (plus ':' and '[]' for IPv6 addresses) or a quoted string.
_PARAMETER_RE = re.compile(
    r"[ \t]*;[ \t]*("
    + _TOKEN
    + r")[ \t]*(?:=[ \t]*(\"(?:[^\"\\]|\\.)*\"|[A-Za-z0-9\-.!%*_+`'~:\[\]]+))?[ \t]*",
    re.DOTALL,
)


@functools.lru_cache(maxsize=1024)
def canonical_name(name: str) -> str:
    """The usual spelling of a header name: long form, conventional case."""
    lower = name.lower()
    lower = COMPACT_FORMS[lower].lower() if lower in COMPACT_FORMS else lower
    return _CANONICAL.get(lower, name)


def _skip_lws(text: str, position: int) -> int:
    while position < len(text) and text[position] in _LWS:
        position += 1
    return position


def _read_quoted(text: str, position: int) -> tuple[str, int]:
    """Unescape the quoted-string starting at ``text[position] == '"'``; return it and the index after it."""
    out = []
    position += 1
    while position < len(text):
        c = text[position]
        if c == "\\":
            if position + 1 >= len(text):
                break
            out.append(text[position + 1])
            position += 2
        elif c == '"':
            return "".join(out), position + 1
        else:
            out.append(c)
            position += 1
    raise SipParseError("unterminated quoted string")


def quote(text: str) -> str:
    """A quoted-string for ``text``, backslash-escaping what qdtext cannot carry."""
    out = ['"']
    for c in text:
        if c in "\r\n":
            continue
        if c in '"\\' or (ord(c) < 0x20 and c != "\t") or c == "\x7f":
            out.append("\\")
        out.append(c)
    out.append('"')
    return "".join(out)


def split_comma_list(value: str) -> list[str]:
    """
    Split a header value at commas outside quoted strings and ``<>``.

    Items are stripped of LWS; empty items are kept so that callers can
    reject them where the grammar forbids them (RFC 4475 section 3.1.2.1).
    """
    if "," not in value:
        return [value.strip(_LWS)]
    if '"' not in value and "<" not in value:
        return [item.strip(_LWS) for item in value.split(",")]
    items = []
    start = 0
    position = 0
    angle = False
    while position < len(value):
        c = value[position]
        if c == '"' and not angle:
            try:
                _, position = _read_quoted(value, position)
            except SipParseError:
                position = len(value)
            continue
        if c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            items.append(value[start:position].strip(_LWS))
            start = position + 1
        position += 1
    items.append(value[start:].strip(_LWS))
    return items


def parse_parameters(text: str, where: str) -> dict[str, str | None]:
    """
    Parse ``*(SEMI name [EQUAL value])`` as found after header values.

    Names are lower-cased (they are case-insensitive); values are kept as
    written, quoted strings with their quotes, because some (``tag``,
    ``branch``) compare case-sensitively.
    """
    parameters: dict[str, str | None] = {}
    position = 0
    end = len(text)
    while position < end:
        match = _PARAMETER_RE.match(text, position)
        if match is None:
            if not text[position:].strip(_LWS):
                break
            raise SipParseError(f"malformed parameter in {where}")
        parameters[match.group(1).lower()] = match.group(2)
        position = match.end()
    return parameters


def format_parameters(parameters: dict[str, str | None]) -> str:
    """The inverse of :func:`parse_parameters`."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in parameters.items())


def _parse_uint(text: str, where: str, limit: int = MAX_UINT32) -> int:
    text = text.strip(_LWS)
    digits = text.lstrip("0")
    if (
        not text.isascii()
        or not text.isdigit()
        or len(digits) > len(str(limit))
        or int(text) > limit
    ):
        raise SipParseError(f"bad {where} value {text[:30]!r}")
    return int(text)


@attrs.define(eq=False)
class Via:
    """One Via value: where the sender wants responses (RFC 3261 s18.2.2, RFC 3581)."""

    transport: str
    host: str
    port: int | None = None
    parameters: dict[str, str | None] = attrs.field(factory=dict)
    protocol: str = SIP_VERSION

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_parameters(self.parameters)}"

    @classmethod
    def parse(cls, text: str) -> Via:
        """Parse one Via value (already split at commas)."""
        match = _VIA_RE.match(text)
        if match is None:
            raise SipParseError("bad Via header")
        name, version, transport, host, port, rest = match.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SipParseError("unsupported SIP version in Via", 505)
        parameters = parse_parameters(rest, "Via")
        via = cls(
            transport=transport.upper(),
            host=parse_host(host, "Via host"),
            port=None if port is None else parse_port(port, "Via port"),
            parameters=parameters,
        )
        for key in ("received", "maddr"):
            value = parameters.get(key, "")
            if value is None or (value and not _is_host(value.strip("[]"))):
                raise SipParseError(f"bad Via {key} parameter")
        rport = parameters.get("rport")
        if rport is not None:
            parse_port(rport, "Via rport")
        ttl = parameters.get("ttl")
        if ttl is not None or "ttl" in parameters:
            _parse_uint(ttl or "", "Via ttl", 255)
        return via

    @property
    def branch(self) -> str | None:
        """The transaction id (RFC 3261 s17.1.3); starts with z9hG4bK when RFC 3261 compliant."""
        return self.parameters.get("branch")

    @property
    def received(self) -> str | None:
        """The source address a server saw, when it differed from ``host``."""
        return self.parameters.get("received")

    @property
    def rport(self) -> int | None:
        """The source port a server filled in (RFC 3581); None when absent or still empty."""
        value = self.parameters.get("rport")
        return None if value is None else int(value)

    @property
    def rport_requested(self) -> bool:
        """Whether the client asked for symmetric response routing (RFC 3581)."""
        return "rport" in self.parameters

    @property
    def sent_by(self) -> tuple[str, int | None]:
        """The host and port the sender named."""
        return self.host, self.port

    @property
    def reliable(self) -> bool:
        """Whether the transport retransmits itself, so SIP must not (s17.1.1.2)."""
        return self.transport not in ("UDP", "DTLS-UDP")

    def copy(self) -> Via:
        """An independent copy."""
        return Via(self.transport, self.host, self.port, dict(self.parameters), self.protocol)


def _is_host(text: str) -> bool:
    try:
        parse_host(text)
    except SipParseError:
        try:
            parse_host(f"[{text}]")
        except SipParseError:
            return False
    return True


@attrs.define(eq=False)
class NameAddress:
    """
    A From, To, Contact, Route or Record-Route value.

    ``uri`` is what is inside ``<>`` (or the bare addr-spec); ``parameters``
    are the header parameters after it (``tag``, ``expires``, ``q``...).
    """

    uri: URI
    display_name: str | None = None
    parameters: dict[str, str | None] = attrs.field(factory=dict)

    def __str__(self) -> str:
        display = "" if self.display_name is None else quote(self.display_name) + " "
        return f"{display}<{self.uri}>{format_parameters(self.parameters)}"

    @classmethod
    def parse(cls, text: str, where: str = "address") -> NameAddress:
        """Parse a name-addr or addr-spec with its header parameters."""
        match = _NAME_ADDR_RE.match(text)
        if match is None:
            return cls._parse_general(text, where)
        quoted, token_display, uri_text, rest = match.groups()
        if quoted is not None:
            display: str | None = _QUOTED_PAIR_RE.sub(r"\1", quoted)
        else:
            display = " ".join(token_display.split()) if token_display else None
        return cls(
            uri=parse_uri(uri_text), display_name=display, parameters=parse_parameters(rest, where)
        )

    @classmethod
    def _parse_general(cls, text: str, where: str) -> NameAddress:
        """Every form, including addr-spec and the malformed ones (which raise); slower."""
        s = text.strip(_LWS)
        position = 0
        display: str | None = None
        if s.startswith('"'):
            display, position = _read_quoted(s, 0)
            position = _skip_lws(s, position)
            if position >= len(s) or s[position] != "<":
                raise SipParseError(f"quoted display name without <URI> in {where}")
        else:
            less = s.find("<")
            if less >= 0:
                prefix = s[:less].strip(_LWS)
                if any(c not in _TOKEN_CHARS and c not in _LWS for c in prefix):
                    raise SipParseError(f"unquoted display name with special characters in {where}")
                display = " ".join(prefix.split()) or None
                position = less
        if position < len(s) and s[position] == "<":
            greater = s.find(">", position)
            if greater < 0:
                raise SipParseError(f"missing '>' in {where}")
            uri_text = s[position + 1 : greater]
            if any(c in uri_text for c in " \t"):
                raise SipParseError(f"whitespace inside <> in {where}")
            rest = s[greater + 1 :]
        else:
            semicolon = s.find(";")
            uri_text = s if semicolon < 0 else s[:semicolon].rstrip(_LWS)
            rest = "" if semicolon < 0 else s[semicolon:]
            # ">" cannot be in a URI (RFC 3986): one here would end the <>
            # our copy of this address is written in, in every answer.
            if any(c in uri_text for c in " \t?>"):
                raise SipParseError(
                    f"URI with spaces, headers or '>' not enclosed in <> in {where}"
                )
        return cls(
            uri=parse_uri(uri_text), display_name=display, parameters=parse_parameters(rest, where)
        )

    @property
    def tag(self) -> str | None:
        """The dialog tag (From/To, RFC 3261 s19.3)."""
        return self.parameters.get("tag")

    @property
    def expires(self) -> int | None:
        """A Contact's ``expires`` parameter in seconds."""
        value = self.parameters.get("expires")
        return None if value is None else _parse_uint(value, "Contact expires")

    @property
    def q(self) -> float | None:
        """A Contact's preference ``q`` (0 to 1)."""
        value = self.parameters.get("q")
        if value is None:
            return None
        if not re.fullmatch(r"(0(\.[0-9]{0,3})?|1(\.0{0,3})?)", value):
            raise SipParseError("bad Contact q value")
        return float(value)

    def copy(self) -> NameAddress:
        """An independent copy."""
        return NameAddress(self.uri.copy(), self.display_name, dict(self.parameters))


@attrs.frozen
class CSeq:
    """The command sequence: orders requests in a dialog, names the method a response answers."""

    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"

    @classmethod
    def parse(cls, text: str) -> CSeq:
        """Parse ``number method``; the number must fit 32 bits."""
        match = _CSEQ_RE.match(text)
        if match is None:
            raise SipParseError("bad CSeq header")
        return cls(_parse_uint(match.group(1), "CSeq"), match.group(2))


class Headers:
    """
    The header fields in order, with names looked up case-insensitively.

    Each entry is one header line (after unfolding) as ``(name, value)``;
    a line may carry several comma-separated values.  Names are stored in
    their canonical spelling so compact forms and long forms are one field.
    """

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in items]
        self._index: dict[str, list[str]] | None = None
        # What was read from the current lines, by field name: the
        # comma-split values and the typed values (see Message._parsed).
        # A change to a field forgets only that field's, so a proxy that
        # adds a Via and a Record-Route, decrements Max-Forwards and pops a
        # Route does not parse From, To, Call-ID or Contact again.
        self._split: dict[str, list[str]] = {}
        self._parsed: dict[str, Any] = {}

    def forget_parses(self) -> None:
        """
        Drop what was read from the lines (it is read again if asked for).

        For messages kept only in case they are needed again, such as a
        transaction's final response held for Timer J: the lookups and
        typed values are most of a message's objects, and the collector
        walks every one of them on each full collection.
        """
        self._index = None
        self._split = {}
        self._parsed = {}

    def _lines_by_name(self) -> dict[str, list[str]]:
        # Built on first lookup and kept up to date field by field after
        # that: messages are read far more often than they are edited.
        if self._index is None:
            index: dict[str, list[str]] = {}
            for n, v in self._items:
                index.setdefault(n, []).append(v)
            self._index = index
        return self._index

    def _changed(self, name: str) -> None:
        """The lines of canonical field ``name`` changed: forget what was read from them."""
        self._split.pop(name, None)
        self._parsed.pop(name, None)
        if self._index is not None:
            lines = [v for n, v in self._items if n == name]
            if lines:
                self._index[name] = lines
            else:
                self._index.pop(name, None)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and canonical_name(name) in self._lines_by_name()

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def copy(self) -> Headers:
        """
        An independent copy, which keeps what was parsed so far: the typed
        values are never changed in place (Message hands out copies), so
        the two can share them until either changes a field.
        """
        duplicate = Headers()
        duplicate._items = list(self._items)
        duplicate._split = dict(self._split)
        duplicate._parsed = dict(self._parsed)
        return duplicate

    def get(self, name: str) -> str | None:
        """The first line's value, or None."""
        lines = self._lines_by_name().get(canonical_name(name))
        return lines[0] if lines else None

    def get_all(self, name: str) -> list[str]:
        """Every line's value, not split at commas (right for Authorization and unknown fields)."""
        return list(self._lines_by_name().get(canonical_name(name), ()))

    def values(self, name: str) -> list[str]:
        """Every comma-separated value over all lines (for list-valued fields like Via or Contact)."""
        return list(self._split_values(canonical_name(name)))

    def _split_values(self, name: str) -> list[str]:
        """``values`` of canonical ``name``, the kept list itself: for Message, which never changes it."""
        split = self._split.get(name)
        if split is None:
            lines = self._lines_by_name().get(name, ())
            split = self._split[name] = [item for line in lines for item in split_comma_list(line)]
        return split

    def add(self, name: str, value: str) -> None:
        """Append a line at the end."""
        name = canonical_name(name)
        self._items.append((name, value))
        self._changed(name)

    def prepend(self, name: str, value: str) -> None:
        """Insert a line above the first line of that name (the top of a Via or Record-Route stack)."""
        name = canonical_name(name)
        index = next((i for i, (n, _) in enumerate(self._items) if n == name), 0)
        self._items.insert(index, (name, value))
        self._changed(name)

    def set(self, name: str, value: str) -> None:
        """Replace every line of that name with one line, where the first one was."""
        name = canonical_name(name)
        index = next((i for i, (n, _) in enumerate(self._items) if n == name), len(self._items))
        self._items = [(n, v) for n, v in self._items if n != name]
        self._items.insert(min(index, len(self._items)), (name, value))
        self._changed(name)

    def remove(self, name: str) -> None:
        """Remove every line of that name."""
        name = canonical_name(name)
        self._items = [(n, v) for n, v in self._items if n != name]
        self._changed(name)

    def remove_line(self, name: str, value: str) -> bool:
        """Remove the first line of that name whose value is exactly ``value``; whether there was one."""
        name = canonical_name(name)
        for index, (n, v) in enumerate(self._items):
            if n == name and v == value:
                del self._items[index]
                self._changed(name)
                return True
        return False

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first comma-separated value (the top Via, the next Route)."""
        name = canonical_name(name)
        for index, (n, v) in enumerate(self._items):
            if n == name:
                items = split_comma_list(v)
                if len(items) > 1:
                    self._items[index] = (n, ", ".join(items[1:]))
                else:
                    del self._items[index]
                self._changed(name)
                return items[0]
        return None


_T = TypeVar("_T")


class _SharedParses(Generic[_T]):
    """
    Parsed header values by their text, shared by the messages that carry
    the same value: the requests and responses of one dialog repeat From,
    To, Contact and the route sets, and a response carries the Vias of
    the request it answers.  Only Message's memo reads these, and it
    hands out copies, so a shared value is never changed.  Bounded in
    entries (the oldest goes first) and in the length of a text kept, so
    a flood of distinct values costs a fixed amount.  A value that does
    not parse raises as usual and is not kept.
    """

    MAX_ENTRIES = 4096
    MAX_TEXT = 512

    def __init__(self) -> None:
        self._values: dict[str, _T] = {}

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, text: object) -> bool:
        return text in self._values

    def get(self, text: str, parse: Callable[[str], _T]) -> _T:
        """``parse(text)``, from the table when that text was parsed lately."""
        value = self._values.get(text)
        if value is not None:
            return value
        value = parse(text)
        if len(text) <= self.MAX_TEXT:
            if len(self._values) >= self.MAX_ENTRIES:
                del self._values[next(iter(self._values))]
            self._values[text] = value
        return value


_ADDRESSES: _SharedParses[NameAddress] = _SharedParses()
_VIAS: _SharedParses[Via] = _SharedParses()


def _one_value(values: list[str], name: str) -> str:
    if len(values) != 1:
        raise SipParseError(f"{'missing' if not values else 'more than one'} {name} header")
    return values[0]


def single_value(line: str, name: str) -> str:
    """
    The one value of a header line that may hold only one (From, To), as
    the full parse reads it: a comma outside quotes and ``<>`` (a bare URI
    whose user part has one) makes it two, which is SipParseError.
    """
    return _one_value(split_comma_list(line), name)


def check_call_id(value: str) -> str:
    """``value`` if it is a well-formed Call-ID (word, optionally ``@`` word); else SipParseError."""
    if not _CALL_ID_RE.match(value) or "," in value:
        raise SipParseError("bad Call-ID header")
    return value


def _shared_address(text: str, where: str) -> NameAddress:
    """``NameAddress.parse(text, where)`` through the shared table (``where`` names errors only)."""
    return _ADDRESSES.get(text, lambda t: NameAddress.parse(t, where))


class Message:
    """
    What requests and responses share: header fields, body and typed access to them.

    The typed properties parse the header text once and remember the result
    until the headers change; mutable values (Via, NameAddress) are handed
    out as copies, so changing one never changes the message: write it back
    through ``headers``.
    """

    headers: Headers
    body: bytes

    def __init__(
        self, headers: Headers | Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> None:
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form; Content-Length always written and equal to the body length."""
        lines = [self.start_line()]
        lines += [f"{n}: {v}" for n, v in self.headers if n != "Content-Length"]
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body

    # Typed access.  Each property parses the current header text, so the
    # values follow changes made through ``headers``.

    def _parsed(self, key: str, build: Callable[[], _T]) -> _T:
        memo = self.headers._parsed
        if key in memo:
            value: _T = memo[key]
            return value
        value = memo[key] = build()
        return value

    def _all_vias(self) -> list[Via]:
        return self._parsed(
            "Via", lambda: [_VIAS.get(v, Via.parse) for v in self.headers._split_values("Via")]
        )

    @property
    def vias(self) -> list[Via]:
        """The Via stack, topmost first."""
        return [via.copy() for via in self._all_vias()]

    @property
    def via(self) -> Via:
        """The topmost Via (the one that names this hop's transaction)."""
        vias = self._all_vias()
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0].copy()

    def _single(self, name: str) -> str:
        return _one_value(self.headers._split_values(name), name)

    def _from(self) -> NameAddress:
        return self._parsed("From", lambda: _shared_address(self._single("From"), "From"))

    def _to(self) -> NameAddress:
        return self._parsed("To", lambda: _shared_address(self._single("To"), "To"))

    @property
    def from_(self) -> NameAddress:
        """The From header (``from`` is a Python keyword)."""
        return self._from().copy()

    @property
    def to(self) -> NameAddress:
        """The To header."""
        return self._to().copy()

    @property
    def from_tag(self) -> str | None:
        """The From tag, without copying the From value."""
        return self._from().tag

    @property
    def to_tag(self) -> str | None:
        """The To tag (None outside a dialog), without copying the To value."""
        return self._to().tag

    @property
    def call_id(self) -> str:
        """The Call-ID."""
        return self._parsed("Call-ID", self._parse_call_id)

    def _parse_call_id(self) -> str:
        return check_call_id(_one_value(self.headers.get_all("Call-ID"), "Call-ID").strip(_LWS))

    @property
    def cseq(self) -> CSeq:
        """The CSeq."""
        return self._parsed("CSeq", lambda: CSeq.parse(self._single("CSeq")))

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (0-255), None when absent (RFC 2543 peers omit it)."""
        return self._parsed("Max-Forwards", self._parse_max_forwards)

    def _parse_max_forwards(self) -> int | None:
        if "Max-Forwards" not in self.headers:
            return None
        return _parse_uint(self._single("Max-Forwards"), "Max-Forwards", 255)

    @property
    def contact_wildcard(self) -> bool:
        """Whether Contact is ``*`` (remove all bindings, RFC 3261 s10.2.2)."""
        return [v for v in self.headers.values("Contact")] == ["*"]

    @property
    def contacts(self) -> list[NameAddress]:
        """The Contact values; empty for ``Contact: *``."""
        return [contact.copy() for contact in self._parsed("Contact", self._parse_contacts)]

    def _parse_contacts(self) -> list[NameAddress]:
        values = self.headers.values("Contact")
        if values == ["*"]:
            return []
        if "*" in values:
            raise SipParseError("Contact '*' mixed with other contacts")
        return [_shared_address(v, "Contact") for v in values]

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds."""
        return self._parsed("Expires", self._parse_expires)

    def _parse_expires(self) -> int | None:
        if "Expires" not in self.headers:
            return None
        return _parse_uint(self._single("Expires"), "Expires")

    def _routes(self, name: str) -> list[NameAddress]:
        return self._parsed(
            name, lambda: [_shared_address(v, name) for v in self.headers._split_values(name)]
        )

    @property
    def routes(self) -> list[NameAddress]:
        """The Route set, next hop first."""
        return [route.copy() for route in self._routes("Route")]

    @property
    def record_routes(self) -> list[NameAddress]:
        """The Record-Route values, topmost first."""
        return [route.copy() for route in self._routes("Record-Route")]

    @property
    def content_type(self) -> str | None:
        """The media type, lower case, without parameters (``application/sdp``)."""
        if "Content-Type" not in self.headers:
            return None
        match = _MEDIA_TYPE_RE.match(self._single("Content-Type"))
        if match is None:
            raise SipParseError("bad Content-Type header")
        return f"{match.group(1)}/{match.group(2)}".lower()

    def validate(self) -> None:
        """
        Parse every field the stack relies on, raising what a server should answer.

        :raises SipParseError: for missing, repeated or malformed fields.
        """
        if not self._all_vias():
            raise SipParseError("missing Via header")
        self._from()
        self._to()
        self.call_id
        self.cseq
        self.max_forwards
        for contact in self._parsed("Contact", self._parse_contacts):
            contact.expires
            contact.q
        self.expires
        self._routes("Route")
        self._routes("Record-Route")
        self.content_type
        for date in self.headers.get_all("Date"):
            if not _DATE_RE.match(date):
                raise SipParseError("bad Date header (must be RFC 1123 GMT)")


class Request(Message):
    """A SIP request."""

    def __init__(
        self,
        method: str,
        uri: URI,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri = uri

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri}>"

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def validate(self) -> None:
        super().validate()
        cseq = self.cseq
        if cseq.method != self.method:
            status = 400 if self.method in KNOWN_METHODS else 501
            raise SipParseError("CSeq method does not match the request method", status)

    def copy(self) -> Request:
        """An independent copy (for forwarding)."""
        return Request(self.method, self.uri.copy(), self.headers.copy(), self.body)


class Response(Message):
    """A SIP response."""

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Headers | Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASON_PHRASES.get(status, "Unknown") if reason is None else reason

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    @property
    def provisional(self) -> bool:
        """1xx."""
        return self.status < 200

    def copy(self) -> Response:
        """An independent copy (for forwarding)."""
        return Response(self.status, self.reason, self.headers.copy(), self.body)


AnyMessage = Union[Request, Response]


def _split_head(data: bytes, max_header_bytes: int) -> tuple[bytes, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > max_header_bytes:
            raise SipParseError("header section too large", 513)
        raise SipParseError("header section not terminated by an empty line")
    if end > max_header_bytes:
        raise SipParseError("header section too large", 513)
    return data[:end], data[end + 4 :]


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    text = head.decode("utf-8", "surrogateescape")
    joined = text.replace("\r\n", "")
    if "\r" in joined or "\n" in joined:
        raise SipParseError("bare CR or LF in header section")
    lines = text.split("\r\n")
    start_line = lines[0]
    fields: list[list[str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not fields:
                raise SipParseError("continuation line before any header")
            fields[-1][1] += " " + line.strip(_LWS)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(_LWS)
        if not colon or not _TOKEN_RE.match(name):
            raise SipParseError("malformed header line")
        fields.append([name, value.strip(_LWS)])
    return start_line, [(n, v.strip(_LWS)) for n, v in fields]


def _parse_start_line(line: str, headers: Headers, body: bytes) -> AnyMessage:
    parts = line.split(" ")
    if line.startswith("SIP/"):
        if len(parts) < 3:
            raise SipParseError("bad Status-Line")
        version, code = parts[0], parts[1]
        reason = line[len(version) + len(code) + 2 :]
        _check_version(version)
        if (
            len(code) != 3
            or not code.isdigit()
            or not code.isascii()
            or not 100 <= int(code) <= 699
        ):
            raise SipParseError("bad status code")
        if any(c in reason for c in "\x00"):
            raise SipParseError("bad reason phrase")
        return Response(int(code), reason, headers, body)
    if len(parts) != 3 or not all(parts):
        raise SipParseError("bad Request-Line (need exactly METHOD SP URI SP SIP/2.0)")
    method, uri_text, version = parts
    _check_version(version)
    if not _TOKEN_RE.match(method):
        raise SipParseError("bad method")
    if uri_text.startswith("<"):
        raise SipParseError("Request-URI must not be enclosed in <>")
    uri = parse_uri(uri_text)
    if isinstance(uri, SipURI) and uri.headers:
        raise SipParseError("Request-URI carries headers")
    return Request(method, uri, headers, body)


def _check_version(version: str) -> None:
    match = _VERSION_RE.match(version)
    if match is None:
        raise SipParseError("bad SIP version")
    if version != SIP_VERSION:
        raise SipParseError("SIP version not supported", 505)


def _content_length(headers: Headers, limit: int) -> int | None:
    lines = headers.get_all("Content-Length")
    if not lines:
        return None
    if len(lines) > 1:
        raise SipParseError("more than one Content-Length header")
    value = lines[0].strip(_LWS)
    if not value.isascii() or not value.isdigit():
        raise SipParseError("bad Content-Length header")
    if len(value.lstrip("0")) > len(str(limit)) or int(value) > limit:
        raise SipParseError("Content-Length over the message size limit", 513)
    return int(value)


def _build(head: bytes, body: bytes, *, datagram: bool, max_message_bytes: int) -> AnyMessage:
    start_line, fields = _parse_head(head)
    headers = Headers(fields)
    length = _content_length(headers, max_message_bytes)
    if length is not None:
        if len(body) < length:
            raise SipParseError("Content-Length larger than the message body")
        body = body[:length]
    elif not datagram:
        body = b""
    message = _parse_start_line(start_line, headers, body)
    message.validate()
    return message


def parse_message(
    data: bytes,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> AnyMessage:
    """
    Parse one whole message as received in a datagram (RFC 3261 s18.3).

    Octets after Content-Length are ignored; without Content-Length the
    body is the rest of the datagram.  Leading CRLFs are skipped (s7.5).

    :raises SipParseError: the only exception, with the status to answer.
    """
    try:
        if len(data) > max_message_bytes:
            raise SipParseError("message too large", 513)
        head, rest = _split_head(data.lstrip(b"\r\n"), max_header_bytes)
        return _build(head, rest, datagram=True, max_message_bytes=max_message_bytes)
    except SipParseError as e:
        e.raw = data
        raise
    except (ValueError, UnicodeError, IndexError) as e:  # pragma: no cover - defence in depth
        raise SipParseError(f"unparseable message ({type(e).__name__})", raw=data) from None


class SipStreamDecoder:
    """
    Frame SIP messages on a byte stream (TCP/TLS) by Content-Length.

    A missing Content-Length on a stream means an empty body.  CRLF lines
    between messages are keepalives (RFC 5626 s3.5.1): each CRLFCRLF "ping"
    is counted and handed out by :meth:`take_keepalive_pings` so that the
    transport can answer with a CRLF "pong".  After a :class:`SipParseError`
    the stream cannot be resynchronised and every further feed raises again:
    close the connection.
    """

    def __init__(
        self, max_message_bytes: int = MAX_MESSAGE_BYTES, max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.max_header_bytes = max_header_bytes
        self._buffer = bytearray()
        self._pings = 0
        self._searched_bytes = 0
        self._pending: tuple[int, int] | None = None
        self._failure: SipParseError | None = None

    def take_keepalive_pings(self) -> int:
        """How many CRLFCRLF pings arrived since the last call."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def buffered_bytes(self) -> int:
        """Octets received but not yet part of a whole message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[AnyMessage]:
        """
        Add received bytes; return the messages they complete.

        :raises SipParseError: when the stream is broken; messages completed
            before the bad one in the same call are lost with it, so callers
            feeding large chunks should close the connection.
        """
        if self._failure is not None:
            raise self._failure
        self._buffer += data
        messages: list[AnyMessage] = []
        try:
            while True:
                self._consume_keepalives()
                message = self._next_message()
                if message is None:
                    return messages
                messages.append(message)
        except SipParseError as e:
            self._failure = e
            raise

    def _consume_keepalives(self) -> None:
        buffer = self._buffer
        while bytes(buffer[:1]) in (b"\r", b"\n"):
            self._searched_bytes = 0
            if buffer.startswith(b"\r\n\r\n"):
                self._pings += 1
                del buffer[:4]
            elif buffer.startswith(b"\r\n") and len(buffer) > 2 and buffer[2:3] != b"\r":
                del buffer[:2]  # a pong, or a stray CRLF before a start line (s7.5)
            elif bytes(buffer) in (b"\r", b"\r\n", b"\r\n\r"):
                return
            else:
                del buffer[:1]

    def _next_message(self) -> AnyMessage | None:
        buffer = self._buffer
        if not buffer:
            return None
        if self._pending is None:
            # Resume the search for the blank line where the last one
            # stopped, so a peer trickling its header section costs linear time.
            end = buffer.find(b"\r\n\r\n", max(0, self._searched_bytes - 3))
            if end < 0:
                self._searched_bytes = len(buffer)
                # Up to three bytes of the blank line may already be here:
                # a head of exactly the cap must pass however it arrives.
                if len(buffer) > self.max_header_bytes + 3:
                    raise SipParseError("header section too large", 513, raw=bytes(buffer[:4096]))
                return None
            self._searched_bytes = 0
            if end > self.max_header_bytes:
                raise SipParseError("header section too large", 513, raw=bytes(buffer[:end]))
            head = bytes(buffer[:end])
            try:
                _, fields = _parse_head(head)
                total = end + 4 + (_content_length(Headers(fields), self.max_message_bytes) or 0)
                if total > self.max_message_bytes:
                    raise SipParseError("message too large", 513)
            except SipParseError as e:
                e.raw = head + b"\r\n\r\n"
                raise
            # Remember the framing while the body arrives.
            self._pending = (end, total)
        end, total = self._pending
        if len(buffer) < total:
            return None
        self._pending = None
        head = bytes(buffer[:end])
        body = bytes(buffer[end + 4 : total])
        del buffer[:total]
        try:
            return _build(head, body, datagram=False, max_message_bytes=self.max_message_bytes)
        except SipParseError as e:
            e.raw = head + b"\r\n\r\n"
            raise


def make_request(
    method: str,
    uri: URI,
    *,
    via: Via,
    from_: NameAddress,
    to: NameAddress,
    call_id: str,
    cseq_number: int,
    contact: NameAddress | None = None,
    max_forwards: int = 70,
    routes: Iterable[NameAddress] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """
    A new request with the header fields RFC 3261 s8.1.1 requires, in the usual order.

    ``from_`` should carry a ``tag``; ``via`` a fresh branch (see
    ``SipTransport.make_via``).
    """
    headers = Headers()
    headers.add("Via", str(via))
    headers.add("Max-Forwards", str(max_forwards))
    for route in routes:
        headers.add("Route", str(route))
    headers.add("From", str(from_))
    headers.add("To", str(to))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq_number} {method}")
    if contact is not None:
        headers.add("Contact", str(contact))
    if content_type is not None:
        headers.add("Content-Type", content_type)
    return Request(method, uri, headers, body)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """
    A response to ``request`` (RFC 3261 s8.2.6.2): Via lines, From, To, Call-ID and CSeq copied.

    ``to_tag`` is added to To when the request's To has no tag yet (a UAS
    must tag every response but 100 Trying).
    """
    headers = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        for value in request.headers.get_all(name):
            headers.add(name, value)
    if to_tag is not None and request.to_tag is None:
        to = request.to
        to.parameters["tag"] = to_tag
        headers.set("To", str(to))
    if status == 100 and "Timestamp" in request.headers:
        headers.add("Timestamp", request.headers.get("Timestamp") or "")
    if content_type is not None:
        headers.add("Content-Type", content_type)
    return Response(status, reason, headers, body)


def error_response(error: SipParseError) -> bytes | None:
    """
    The wire form of the response a server owes for an unparseable request.

    Built from the raw Via, From, To, Call-ID and CSeq lines of
    ``error.raw``, since the message itself did not parse.  None when no
    response can be built: responses (never answered), missing fields, or
    a start line that is not a request.
    """
    raw = error.raw
    if raw is None:
        return None
    try:
        head = raw.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
        start_line, fields = _parse_head(head)
    except SipParseError:
        return None
    if start_line.startswith("SIP/") or " " not in start_line:
        return None
    headers = Headers(fields)
    copied = Headers()
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        lines = headers.get_all(name)
        if not lines:
            return None
        for value in lines:
            copied.add(name, value)
    if start_line.split(" ", 1)[0] == "ACK":
        return None  # ACK gets no response (s17.2.1)
    phrase = REASON_PHRASES.get(error.status, "Bad Request")
    detail = "".join(c for c in error.reason if c.isprintable())[:100]
    return Response(error.status, f"{phrase} ({detail})", copied).to_bytes()


def check_request_uri_scheme(request: Request, schemes: Iterable[str] = ("sip", "sips")) -> None:
    """
    Refuse a Request-URI scheme this element cannot route (RFC 3261 s8.2.2.1).

    :raises SipParseError: with status 416.
    """
    if request.uri.scheme.lower() not in schemes:
        raise SipParseError(f"unsupported URI scheme {request.uri.scheme[:20]!r}", 416)
