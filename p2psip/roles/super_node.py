"""
What the bootstrap and peer roles share: both are ring members that can
also serve SIP, so they take the same options and build the same services.
Only whether they may found a ring, and their defaults, differ.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.application.service import IService

from p2psip.roles.overlay_service import OverlayOptions, make_overlay_role
from p2psip.roles.sip_service import (
    SIP_OPTION_FLAGS,
    SIP_OPTION_PARAMETERS,
    add_sip_service,
    check_sip_options,
)


class SuperNodeOptions(OverlayOptions):
    """Overlay options plus the SIP super-node's (``--sip``, ``--users``, ...)."""

    repeatable: ClassVar[tuple[str, ...]] = ("bootstrap", "sip")
    optParameters = SIP_OPTION_PARAMETERS
    optFlags = SIP_OPTION_FLAGS

    def postOptions(self) -> None:
        super().postOptions()
        check_sip_options(self)


def make_super_node_service(
    options: SuperNodeOptions, reactor: Any, found_ring: bool, title: str
) -> IService:
    """The ring member's services, plus SIP when ``--sip`` is given."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    top, overlay = make_overlay_role(options, reactor, found_ring=found_ring, title=title)
    add_sip_service(top, overlay, options, reactor)
    return top
