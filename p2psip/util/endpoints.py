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
    port_text: str | None = None
    interface = ""
    for index, field in enumerate(fields[1:]):
        key, eq, value = field.partition("=")
        if not eq and index == 0:
            port_text = field
        elif eq and key == "port":
            port_text = value
        elif eq and key == "interface":
            interface = value
        else:
            raise ValueError(f"bad UDP listen address {description!r}: unknown field {field!r}; expected {UDP_SYNTAX}")
    if port_text is None or not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
        raise ValueError(f"bad UDP listen address {description!r}: port must be 0-65535; expected {UDP_SYNTAX}")
    return UDPListenAddress(int(port_text), interface)
