"""
SIP, SIPS and tel URIs (RFC 3261 section 19.1, RFC 3966).

Wire format of a SIP URI::

    sip:user:password@host:port;uri-parameters?headers

``user``, ``password``, parameter names and values and header names and
values may carry ``%HH`` escapes (RFC 3261 section 19.1.2); they are
unescaped exactly once when parsed and escaped again, in canonical form,
when serialised.  The user part may itself contain ``;``, ``?`` and ``,``
(RFC 4475 section 3.1.1.9): URI parameters only start after the host.

Other schemes are kept as an opaque :class:`AbsoluteURI` so that a message
with an unknown Request-URI scheme still parses and can be answered with
416 (RFC 4475 section 3.3.2).
"""

from __future__ import annotations

import re
from typing import Union

import attrs

from p2psip.sip.errors import SipParseError

_ALPHANUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_UNRESERVED = _ALPHANUM + "-_.!~*'()"
# RFC 3261 section 25.1: characters that may appear unescaped in each part.
_USER_SAFE = frozenset(_UNRESERVED + "&=+$,;?/")
_PASSWORD_SAFE = frozenset(_UNRESERVED + "&=+$,")
_PARAM_SAFE = frozenset(_UNRESERVED + "[]/:&+$")
_HEADER_SAFE = frozenset(_UNRESERVED + "[]/?:+$")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-.]*\Z")
_IPV6_REFERENCE = re.compile(r"\[[0-9A-Fa-f:.]+\]\Z")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Printable ASCII minus what may not appear raw in any URI part we accept.
_URI_CHARACTERS = re.compile(r"[!-~]+\Z")
_TEL_NUMBER = re.compile(r"\+?[0-9A-Fa-f*#\-.()]+\Z")

MAX_PORT = 65535
# RFC 3261 s19.1.4: these URI parameters count even when only one URI has them.
_SIGNIFICANT_PARAMETERS = frozenset({"user", "ttl", "method", "maddr", "transport"})


def _fold(value: str | None) -> str | None:
    return None if value is None else value.lower()


def _header_set(headers: list[tuple[str, str]]) -> frozenset[tuple[str, str]]:
    return frozenset((name.lower(), value) for name, value in headers)


def unescape(text: str, where: str) -> str:
    """
    Undo ``%HH`` escapes once; octets that are not UTF-8 survive as surrogates.

    :raises SipParseError: for a ``%`` not followed by two hex digits.
    """
    if "%" not in text:
        return text
    if _BAD_ESCAPE.search(text):
        raise SipParseError(f"bad %-escape in URI {where}")
    octets = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        octets += text[position : match.start()].encode("utf-8", "surrogateescape")
        octets.append(int(match.group(1), 16))
        position = match.end()
    octets += text[position:].encode("utf-8", "surrogateescape")
    return octets.decode("utf-8", "surrogateescape")


def escape(text: str, safe: frozenset[str]) -> str:
    """Escape every octet of ``text`` (as UTF-8) that is not in ``safe``."""
    if all(c in safe for c in text):
        return text
    out = []
    for octet in text.encode("utf-8", "surrogateescape"):
        c = chr(octet)
        out.append(c if c in safe else f"%{octet:02X}")
    return "".join(out)


def parse_host(text: str, where: str = "host") -> str:
    """Check a hostname, IPv4 address or bracketed IPv6 reference."""
    if _HOSTNAME.match(text) or _IPV6_REFERENCE.match(text):
        return text
    raise SipParseError(f"bad {where} {text[:40]!r}")


def parse_port(text: str, where: str = "port") -> int:
    """A decimal port number 0-65535."""
    if not text.isdigit() or not text.isascii() or len(text) > 5 or int(text) > MAX_PORT:
        raise SipParseError(f"bad {where} {text[:40]!r}")
    return int(text)


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` where host may be a bracketed IPv6 reference."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"bad host:port {text[:40]!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_raw = text.partition(":")
        port_text = port_text_raw if sep else None
    return parse_host(host), (None if port_text is None else parse_port(port_text))


@attrs.define(eq=False)
class SipURI:
    """A ``sip:`` or ``sips:`` URI with its parts unescaped."""

    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    scheme: str = "sip"
    parameters: dict[str, str | None] = attrs.field(factory=dict)
    """URI parameters by lower-case name; value None for a flag (``;lr``)."""
    headers: list[tuple[str, str]] = attrs.field(factory=list)
    """The ``?name=value`` headers in order."""

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(escape(self.user, _USER_SAFE))
            if self.password is not None:
                parts += [":", escape(self.password, _PASSWORD_SAFE)]
            parts.append("@")
        parts.append(self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        for name, value in self.parameters.items():
            parts += [";", escape(name, _PARAM_SAFE)]
            if value is not None:
                parts += ["=", escape(value, _PARAM_SAFE)]
        for index, (name, value) in enumerate(self.headers):
            parts += [
                "&" if index else "?",
                escape(name, _HEADER_SAFE),
                "=",
                escape(value, _HEADER_SAFE),
            ]
        return "".join(parts)

    def __eq__(self, other: object) -> bool:
        """
        URI equivalence as RFC 3261 s19.1.4 defines it.

        User and password compare case-sensitively after unescaping, the
        host case-insensitively, the port only when written the same
        (``sip:h`` is not ``sip:h:5060``).  The ``user``, ``ttl``,
        ``method``, ``maddr`` and ``transport`` parameters must agree when
        either URI has them; other parameters only when both have them.
        Headers must agree.
        """
        if not isinstance(other, SipURI):
            return NotImplemented
        if self._hash_key() != other._hash_key():
            return False
        mine, theirs = self.parameters, other.parameters
        for name in mine.keys() | theirs.keys():
            if name not in _SIGNIFICANT_PARAMETERS and (name not in mine or name not in theirs):
                continue
            if _fold(mine.get(name, "")) != _fold(theirs.get(name, "")):
                return False
        return _header_set(self.headers) == _header_set(other.headers)

    def __hash__(self) -> int:
        return hash(self._hash_key())

    def _hash_key(self) -> tuple[object, ...]:
        return (self.scheme.lower(), self.user, self.password, self.host.lower(), self.port)

    @property
    def transport(self) -> str | None:
        """The ``transport`` URI parameter, lower case."""
        value = self.parameters.get("transport")
        return value.lower() if value else None

    @property
    def loose_route(self) -> bool:
        """Whether the ``lr`` parameter is present (RFC 3261 s16.12)."""
        return "lr" in self.parameters

    def address_of_record(self) -> str:
        """``scheme:user@host`` without port or parameters, host lower case: a registration key."""
        user = "" if self.user is None else escape(self.user, _USER_SAFE) + "@"
        return f"{self.scheme.lower()}:{user}{self.host.lower()}"

    def copy(self) -> SipURI:
        """An independent copy that can be changed without touching this one."""
        return SipURI(
            self.host,
            self.user,
            self.password,
            self.port,
            self.scheme,
            dict(self.parameters),
            list(self.headers),
        )


@attrs.define(eq=True)
class TelURI:
    """A ``tel:`` URI (RFC 3966): a number plus parameters, kept as written."""

    number: str
    parameters: dict[str, str | None] = attrs.field(factory=dict)
    scheme: str = "tel"

    def __str__(self) -> str:
        params = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in self.parameters.items())
        return f"tel:{self.number}{params}"

    def copy(self) -> TelURI:
        """An independent copy."""
        return attrs.evolve(self, parameters=dict(self.parameters))


@attrs.define(eq=True, frozen=True)
class AbsoluteURI:
    """A URI of a scheme SIP does not route on; kept opaque."""

    scheme: str
    opaque: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.opaque}"

    def copy(self) -> AbsoluteURI:
        """Itself: an AbsoluteURI cannot be changed."""
        return self


URI = Union[SipURI, TelURI, AbsoluteURI]


def parse_uri(text: str) -> URI:
    """
    Parse a URI as written in a Request-URI or inside ``<>``.

    :raises SipParseError: (400) for malformed URIs.  Unknown schemes are
        not an error here: they come back as :class:`AbsoluteURI`.
    """
    if not text or not _URI_CHARACTERS.match(text):
        raise SipParseError(f"bad URI {text[:60]!r}")
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME.match(scheme) or not rest:
        raise SipParseError(f"bad URI {text[:60]!r}")
    lower = scheme.lower()
    if lower in ("sip", "sips"):
        return _parse_sip_uri(lower, rest)
    if lower == "tel":
        return _parse_tel_uri(rest)
    return AbsoluteURI(scheme, rest)


def _parse_parameters(text: str, where: str) -> dict[str, str | None]:
    parameters: dict[str, str | None] = {}
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty {where} parameter")
        key = unescape(name, f"{where} parameter").lower()
        parameters[key] = unescape(value, f"{where} parameter") if sep else None
    return parameters


def _parse_sip_uri(scheme: str, rest: str) -> SipURI:
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, sep, password_text = userinfo.partition(":")
        if not user_text:
            raise SipParseError("empty user part in SIP URI")
        user = unescape(user_text, "user")
        password = unescape(password_text, "password") if sep else None
    rest, sep, header_text = rest.partition("?")
    hostport, _, parameter_text = rest.partition(";")
    host, port = split_host_port(hostport)
    parameters = _parse_parameters(parameter_text, "URI") if parameter_text or ";" in rest else {}
    headers: list[tuple[str, str]] = []
    if sep:
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq:
                raise SipParseError("bad URI header")
            headers.append((unescape(name, "header"), unescape(value, "header")))
    return SipURI(
        host=host,
        user=user,
        password=password,
        port=port,
        scheme=scheme,
        parameters=parameters,
        headers=headers,
    )


def _parse_tel_uri(rest: str) -> TelURI:
    number, _, parameter_text = rest.partition(";")
    if not _TEL_NUMBER.match(number):
        raise SipParseError(f"bad tel number {number[:40]!r}")
    parameters = _parse_parameters(parameter_text, "tel") if parameter_text else {}
    return TelURI(number, parameters)
