"""
The SIP part of the admin API: ``registration``, an AOR's bindings as the
overlay holds them, with the peer responsible for them and the route the
lookup took.  ``p2psip lookup sip:alice@DOMAIN`` prints it.

Served by every role with a SIP stack (super-nodes with ``--sip``, the
thin client), to holders of the admin token, like the overlay routes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks

from p2psip.overlay.errors import OverlayError
from p2psip.overlay.operations import OverlayOperations
from p2psip.roles.overlay_api import Body
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.users import canonical_aor
from p2psip.usages.sip import registration_resource_name
from p2psip.util.ids import id_hex
from p2psip.web.site import ApiError, ApiRoute


def sip_api_routes(
    node: OverlayOperations, location: OverlayLocationService
) -> dict[str, ApiRoute]:
    """The ``registration`` route on ``node``'s location service."""

    @inlineCallbacks
    def lookup(aor: str) -> Generator[Deferred[Any], Any, dict[str, Any]]:
        resource_name = registration_resource_name(aor)
        try:
            route = yield node.lookup(resource_name)
            bindings = yield location.lookup(aor)
        except OverlayError as error:
            raise ApiError(502, error.reason) from None
        now = node.clock.seconds()
        answer: dict[str, Any] = {
            "aor": aor,
            "resource_name": resource_name,
            **route.as_json(),
            "bindings": [
                {
                    "contact": binding.contact,
                    "node_id": id_hex(binding.node_id) if binding.node_id is not None else None,
                    "expires_in": binding.expires_in(now),
                    "q": binding.q,
                }
                for binding in bindings
            ],
        }
        answer["found"] = bool(answer["bindings"])
        return answer

    def registration(args: dict[str, str], body: Body) -> Deferred[dict[str, Any]]:
        text = (body or {}).get("aor") or args.get("aor")
        if not isinstance(text, str) or not text:
            raise ApiError(400, "give the address-of-record as ?aor=sip:alice@DOMAIN")
        try:
            aor = canonical_aor(text)
            registration_resource_name(aor)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        if not node.membership.reaches_ring():
            raise ApiError(503, f"the node is {node.state.value}; see /status and its log")
        result: Deferred[dict[str, Any]] = lookup(aor)
        return result

    return {"registration": ApiRoute(("GET",), registration)}


__all__ = ["sip_api_routes"]
