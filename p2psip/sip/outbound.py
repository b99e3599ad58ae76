"""
SIP Outbound (RFC 5626): what the registrar and the proxy need to know of it.

A phone that wants to stay reachable through more than one super-node
registers the same *instance* (``+sip.instance="<urn:uuid:...>"``, RFC 5626
s4.1) with one ``reg-id`` per super-node it uses as outbound proxy, and
says ``Supported: outbound``.  Each super-node then keeps the binding with
the *flow* the REGISTER came in on (its flow token: the transport, and the
far end's address or connection) and answers ``Require: outbound`` with a
``Flow-Timer`` telling the phone how often to send keepalives (s4.4): CRLF
pairs on TCP and TLS (answered by one CRLF, s3.5.1), STUN Binding requests
on UDP, which the SIP transport answers on the SIP port itself (s8).

The point of the instance is s5.3: a request for the AOR goes to each
*instance* once, over one of its flows, and over the next one only when
that flow fails (a transport error, no answer, or ``430 Flow Failed``).
Without it, a proxy forks to every binding, the phone gets the INVITE
once per super-node, and answers the second copy with 482 (merged
request).  :func:`group_by_instance` gives the proxy those groups.

Sans-IO: values in, values out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from p2psip.sip.message import NameAddress, Request

OPTION_TAG = "outbound"
#: The keepalive interval the registrar asks for (RFC 5626 s4.4.1 suggests
#: 120 s for connection-oriented flows; UDP NAT bindings need shorter, and
#: a phone keeps the smaller of this and its own).
FLOW_TIMER_SECONDS = 25
#: RFC 5626 s5.3: "430 Flow Failed".
FLOW_FAILED = 430
#: A flow that carries no answer at all (not even 100 Trying, which a live
#: super-node sends at once) within this long is given up for the next one.
FLOW_ANSWER_SECONDS = 2.0
#: What an instance may look like when this node stores it in the overlay:
#: a URN (RFC 8141 characters without quoting or angle brackets).
_INSTANCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:.\-_%+=!$*'()@/~]{0,127}$")
_MAX_REG_ID = 2**31 - 1


def supports_outbound(request: Request) -> bool:
    """Whether the UA said it supports (or requires) outbound."""
    tags = [*request.headers.values("Supported"), *request.headers.values("Require")]
    return any(tag.strip().lower() == OPTION_TAG for tag in tags)


def instance_of(contact: NameAddress) -> str | None:
    """The ``+sip.instance`` of a Contact, without quotes and angle brackets (None: none, or unusable)."""
    value = contact.parameters.get("+sip.instance")
    if not value:
        return None
    value = value.strip()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = value[1:-1]
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value if _INSTANCE.match(value) else None


def reg_id_of(contact: NameAddress) -> int | None:
    """The ``reg-id`` of a Contact (s4.2: a positive integer), or None."""
    value = contact.parameters.get("reg-id")
    if value is None or not value.isdigit():
        return None
    reg_id = int(value)
    return reg_id if 0 < reg_id <= _MAX_REG_ID else None


def valid_instance(value: str) -> bool:
    """Whether ``value`` is an instance this node writes into (and reads from) the overlay."""
    return bool(_INSTANCE.match(value))


T = TypeVar("T")


def group_by_instance(items: Iterable[T], instance: Callable[[T], str | None]) -> list[list[T]]:
    """
    One group per instance, in the order each instance first appears,
    keeping the items' order inside a group; each item without an instance
    is a group of its own.  The proxy tries a group's items one after
    another (s5.3) and forks to the groups.
    """
    groups: list[list[T]] = []
    by_instance: dict[str, list[T]] = {}
    for item in items:
        name = instance(item)
        if name is None:
            groups.append([item])
            continue
        group = by_instance.get(name)
        if group is None:
            group = by_instance[name] = []
            groups.append(group)
        group.append(item)
    return groups


def flows_first(bindings: Sequence[T], reg_id: Callable[[T], int | None]) -> list[T]:
    """Bindings of one instance in the order their flows are tried: lowest reg-id first."""
    return sorted(bindings, key=lambda b: (reg_id(b) is None, reg_id(b) or 0))
