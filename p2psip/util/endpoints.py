"""
Listen addresses as strings, for UDP too.

Twisted's endpoint strings (``tcp:5060``, ``ssl:5061:...``) cover stream
transports; Twisted has no UDP endpoints (twisted/twisted#4471), so
``udp:PORT[:interface=ADDR]`` is parsed here and used with ``listenUDP``.
The syntax follows Twisted's: ``:`` separates fields, ``\\:`` is a literal
colon (for IPv6 interfaces), fields are positional or ``key=value``.
"""

from __future__ import annotations

import attrs

UDP_SYNTAX = "udp:PORT[:interface=ADDR]"


@attrs.frozen
class UDPListenAddress:
    """Where to bind a UDP socket: port 0 asks the OS for a free one."""

    port: int
    interface: str = ""

    def __str__(self) -> str:
        interface = self.interface.replace(":", "\\:")
        return f"udp:{self.port}" + (f":interface={interface}" if interface else "")


def split_description(description: str) -> list[str]:
    """Split an endpoint string at unescaped colons, undoing ``\\`` escapes."""
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for c in description:
        if escaped:
            current.append(c)
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(c)
    fields.append("".join(current))
    return fields


def is_udp(description: str) -> bool:
    """Whether a listen string names UDP (everything else is a Twisted stream endpoint)."""
    return description.strip().lower().startswith("udp:")


def parse_udp_listen_address(description: str) -> UDPListenAddress:
    """
    Parse ``udp:PORT[:interface=ADDR]`` (``port=PORT`` also accepted).

    :raises ValueError: naming the expected syntax.
    """
    fields = split_description(description.strip())
    if fields[0].lower() != "udp" or len(fields) < 2:
        raise ValueError(f"bad UDP listen address {description!r}: expected {UDP_SYNTAX}")
    port_text, named = _listen_fields(fields)
    unknown = set(named) - {"interface"}
    if unknown:
        field = sorted(unknown)[0]
        raise ValueError(
            f"bad UDP listen address {description!r}: unknown field {field!r}; expected {UDP_SYNTAX}"
        )
    port = _port_number(port_text)
    if port is None:
        raise ValueError(
            f"bad UDP listen address {description!r}: port must be 0-65535; expected {UDP_SYNTAX}"
        )
    return UDPListenAddress(port, named.get("interface", ""))


def _listen_fields(fields: list[str]) -> tuple[str | None, dict[str, str]]:
    """
    The port and the named fields of a split listen string: the port is the
    first field when it is positional, or ``port=``; a second positional
    field is reported under the name ``""``.
    """
    port_text: str | None = None
    named: dict[str, str] = {}
    for index, field in enumerate(fields[1:]):
        key, eq, value = field.partition("=")
        if not eq and index == 0:
            port_text = field
        elif eq and key == "port":
            port_text = value
        else:
            named[key if eq else ""] = value if eq else field
    return port_text, named


def _port_number(text: str | None, lowest: int = 0) -> int | None:
    """``text`` as a port number from ``lowest`` to 65535, or None."""
    if text is None or not text.isascii() or not text.isdigit():
        return None
    port = int(text)
    return port if lowest <= port <= 65535 else None


def escape_field(value: str) -> str:
    """A value as one endpoint-string field: ``\\`` and ``:`` escaped (IPv6 addresses)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def tcp_client_description(host: str, port: int) -> str:
    """The client endpoint string for a TCP connection to ``host:port`` (IPv6 hosts escaped)."""
    return f"tcp:host={escape_field(host)}:port={port}"


def parse_tcp_client_description(description: str) -> tuple[str, int]:
    """
    Host and port of a ``tcp:`` client endpoint string, positional
    (``tcp:HOST:PORT``) or by name (``tcp:host=HOST:port=PORT``).

    :raises ValueError: naming the expected syntax.
    """
    syntax = "tcp:HOST:PORT or tcp:host=HOST:port=PORT"
    fields = split_description(description.strip())
    if fields[0].lower() != "tcp":
        raise ValueError(f"bad TCP client endpoint {description!r}: expected {syntax}")
    positional: list[str] = []
    named: dict[str, str] = {}
    for field in fields[1:]:
        key, eq, value = field.partition("=")
        if eq and key in ("host", "port", "timeout", "bindAddress"):
            named[key] = value
        elif not eq:
            positional.append(field)
        else:
            raise ValueError(
                f"bad TCP client endpoint {description!r}: unknown field {field!r}; expected {syntax}"
            )
    host = named.get("host", positional[0] if positional else "")
    port_text = named.get("port", positional[1] if len(positional) > 1 else "")
    port = _port_number(port_text, lowest=1)
    if not host or port is None:
        raise ValueError(f"bad TCP client endpoint {description!r}: expected {syntax}")
    return host, port


def stream_listen_port(description: str) -> int | None:
    """
    The port a Twisted stream server endpoint listens on (``tcp:3478``,
    ``ssl:port=5061:privateKey=...``, ``tcp:6084:interface=\\:\\:1``).

    None for endpoints without a port (``unix:``, ``systemd:``).

    :raises ValueError: when a ``tcp``/``ssl``/``tls`` string has no valid port.
    """
    fields = split_description(description.strip())
    kind = fields[0].lower()
    if kind not in ("tcp", "tcp6", "ssl", "tls"):
        return None
    port = _port_number(_listen_fields(fields)[0])
    if port is None:
        raise ValueError(
            f"{description!r} names no port from 0 to 65535: write for example {kind}:3478"
        )
    return port


def parse_host_port(text: str) -> tuple[str, int]:
    """
    ``IP:PORT`` or ``[IPv6]:PORT`` (the form of a SIP or STUN address).

    :raises ValueError: naming both forms.
    """
    syntax = "IP:PORT or [IPv6]:PORT, e.g. 198.51.100.11:3479 or [2001:db8::11]:3479"
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not bracket:
            raise ValueError(f"{text!r}: expected {syntax}")
    else:
        host, _colon, port_text = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"{text!r}: an IPv6 address goes in brackets; expected {syntax}")
    port = _port_number(port_text)
    if not host or port is None:
        raise ValueError(f"{text!r}: expected {syntax}")
    return host, port


def endpoint_interface(description: str) -> str | None:
    """
    The ``interface=`` of a listen string (``tcp:6084:interface=\\:\\:1`` gives ``::1``).

    Works for Twisted stream endpoints and ``udp:`` alike; None when the
    string names no interface.
    """
    for field in split_description(description.strip())[1:]:
        key, equals, value = field.partition("=")
        if equals and key == "interface" and value:
            return value
    return None
