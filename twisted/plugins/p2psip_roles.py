"""twistd plugins for the p2psip roles (imported lazily, one module per role)."""

from twisted.application.service import ServiceMaker

bootstrap = ServiceMaker(
    "p2psip bootstrap", "p2psip.roles.bootstrap", "Seed peer for a p2psip ring.", "p2psip-bootstrap"
)
peer = ServiceMaker(
    "p2psip super-node", "p2psip.roles.peer", "Super-node: stores part of the DHT.", "p2psip-peer"
)
mediator = ServiceMaker(
    "p2psip mediator",
    "p2psip.roles.mediator",
    "Public STUN/STUNT rendezvous server.",
    "p2psip-mediator",
)
client = ServiceMaker(
    "p2psip client",
    "p2psip.roles.client",
    "Thin client: attached to one peer, with a local SIP adaptor for phones.",
    "p2psip-client",
)
