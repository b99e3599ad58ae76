"""
The admin API of a ring role and of the thin client: put, get, lookup,
the ring walk and what the ring page draws (a member's tables only on a
ring member: a client has none to show).

``get`` of a SIP AOR (``sip:alice@example.org``) answers the user's
registration (RFC 7904 SIP-REGISTRATION under ``alice@example.org``, one
entry per serving super-node), not a DATA value stored under the URI.

``p2psip put|get|lookup|ring`` and the ring page call these routes on the
role's HTTP listener (loopback by default), every one with the role's
admin token: the ring walk and the ring view name every member and its
address, and cost the ring one Attach per member.  Input is checked here
and refused with a 400 naming what to send; overlay failures are 502s
with the overlay's reason.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from p2psip.overlay.errors import OverlayError
from p2psip.overlay.kinds import DATA
from p2psip.overlay.node import OverlayNode
from p2psip.overlay.operations import OverlayOperations
from p2psip.overlay.results import OperationResult
from p2psip.sip.location import Binding, OverlayLocationService
from p2psip.sip.users import canonical_aor
from p2psip.usages.sip import registration_resource_name
from p2psip.util.ids import id_hex, parse_id
from p2psip.web.ring_view import RingWalks, ring_view, tables_json
from p2psip.web.site import ApiError, ApiRoute

_NODE_ID = re.compile(r"[0-9a-fA-F]{32}")
#: The DATA Kind's longest lifetime: the ring refuses longer ones, so say so here.
MAX_LIFETIME_SECONDS = DATA.max_lifetime_seconds

#: What ``get`` fetches: ``kind=data`` (what ``put`` stores under the name
#: itself) or ``kind=sip-registration`` (RFC 7904: the phones registered
#: for a SIP AOR, stored under the AOR without its scheme).  A name that
#: is a sip: or sips: URI means the registration unless ``kind`` says data.
GET_KINDS = ("data", "sip-registration")

Body = dict[str, Any] | None


def _name(args: dict[str, str], body: Body) -> str:
    name = (body or {}).get("name") or args.get("name")
    if not name or not isinstance(name, str):
        raise ApiError(400, 'give the resource name as ?name=NAME (or JSON {"name": ...})')
    return name


def _lifetime(raw: object) -> int:
    """
    Whole seconds from JSON (an integer) or a query string (ASCII digits).

    ``int()`` alone would take 1.5, true, "\u0661" and fail with
    OverflowError on 1e999 (which JSON reads as infinity).
    """
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 20:
        return int(raw)
    raise ApiError(400, "lifetime must be a whole number of seconds")


def _as_api_error(failure: Failure) -> Failure:
    if failure.check(OverlayError):
        raise ApiError(502, failure.getErrorMessage())
    return failure


def _json(d: Deferred[OperationResult]) -> Deferred[dict[str, Any]]:
    return d.addCallbacks(lambda result: result.as_json(), _as_api_error)


def overlay_api_routes(node: OverlayOperations) -> dict[str, ApiRoute]:
    """The routes for ``node`` (a ring member, or a client that asks through its peer)."""

    def in_ring() -> None:
        if not node.membership.reaches_ring():
            what = "attached to a peer" if node.membership.is_client() else "in a ring"
            raise ApiError(
                503, f"the node is {node.state.value}, not {what} yet; see /status and its log"
            )

    def put(args: dict[str, str], body: Body) -> Deferred[dict[str, Any]]:
        name = _name(args, body)
        value = (body or {}).get("value", args.get("value"))
        if not isinstance(value, str):
            raise ApiError(400, 'give the value as JSON {"value": "..."}')
        lifetime = _lifetime((body or {}).get("lifetime", args.get("lifetime", 3600)))
        if not 1 <= lifetime <= MAX_LIFETIME_SECONDS:
            raise ApiError(400, f"lifetime must be between 1 and {MAX_LIFETIME_SECONDS} seconds")
        in_ring()
        return _json(node.put(name, value.encode("utf-8"), lifetime))

    def get(args: dict[str, str], body: Body) -> Deferred[dict[str, Any]]:
        name = _name(args, body)
        kind = (body or {}).get("kind") or args.get("kind") or _default_kind(name)
        if kind not in GET_KINDS:
            raise ApiError(400, f"kind must be one of {', '.join(GET_KINDS)}, not {kind!r}")
        if kind == "sip-registration":
            aor, resource = _registration_names(name, node.config.overlay_name)
            in_ring()
            return _registration(node, aor, resource).addErrback(_as_api_error)
        in_ring()
        return _json(node.get(name))

    def lookup(args: dict[str, str], body: Body) -> Deferred[dict[str, Any]]:
        name = _name(args, body)
        in_ring()
        return _json(node.lookup(name))

    walks = RingWalks(node, node.clock)

    def ring(args: dict[str, str], body: Body) -> Deferred[Any]:
        in_ring()
        return walks.walk().addErrback(_as_api_error)

    def view(args: dict[str, str], body: Body) -> Deferred[Any]:
        in_ring()
        return walks.walk().addCallbacks(lambda walked: ring_view(node, walked), _as_api_error)

    def peer_tables(args: dict[str, str], body: Body) -> Deferred[Any]:
        text = args.get("node", "")
        if not _NODE_ID.fullmatch(text):
            raise ApiError(
                400, "give the member as ?node=NODE_ID (32 hex digits, as /status shows)"
            )
        if not isinstance(node, OverlayNode):
            raise ApiError(404, "a thin client has no ring tables; ask a ring member's API")
        in_ring()
        asked = node.peer_tables(parse_id(text))
        return asked.addCallbacks(
            lambda tables: tables_json(tables, node.clock.seconds()), _as_api_error
        )

    return {
        "put": ApiRoute(("POST",), put),
        "get": ApiRoute(("GET",), get),
        "lookup": ApiRoute(("GET",), lookup),
        "ring": ApiRoute(("GET",), ring),
        "ring-view": ApiRoute(("GET",), view),
        "peer-tables": ApiRoute(("GET",), peer_tables),
    }


def _default_kind(name: str) -> str:
    return "sip-registration" if name.lower().startswith(("sip:", "sips:")) else "data"


def _registration_names(name: str, domain: str) -> tuple[str, str]:
    """The canonical AOR and the resource its SIP-REGISTRATION is stored under."""
    try:
        aor = canonical_aor(name)
        return aor, registration_resource_name(aor)
    except ValueError as e:
        raise ApiError(
            400, f"{e}; a registration is fetched by its AOR, e.g. sip:alice@{domain}"
        ) from None


@inlineCallbacks
def _registration(
    node: OverlayOperations, aor: str, resource: str
) -> Generator[Deferred[Any], Any, dict[str, Any]]:
    """
    The live bindings of ``aor`` across the ring, with where they are
    stored and the route there (the lookup and the fetch go the same way).
    """
    where: OperationResult = yield node.lookup(resource)
    bindings: list[Binding] = yield OverlayLocationService(node, node.clock).lookup(aor)
    now = node.clock.seconds()
    answer = where.as_json()
    answer.update(
        kind="sip-registration",
        aor=aor,
        resource=resource,
        found=bool(bindings),
        bindings=[
            {
                "contact": binding.contact,
                "expires": binding.expires_in(now),
                "q": binding.q,
                "served_by": id_hex(binding.node_id) if binding.node_id is not None else None,
            }
            for binding in bindings
        ],
    )
    return answer
