"""twistd plugins for the p2psip roles; each role module is imported only when it runs."""

from twisted.application.service import ServiceMaker

mediator = ServiceMaker(
    "p2psip mediator", "p2psip.roles.mediator", "Public STUN/STUNT rendezvous server.", "p2psip-mediator"
)
