"""
Building blocks for the unit tests of the node's parts: a link that
records what is sent on it, and a Messenger wired to fakes, so each part
can be driven message by message on a fake clock.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from p2psip.overlay.counters import Counters
from p2psip.overlay.identity import CertificateCache, NodeIdentity
from p2psip.overlay.kinds import DEFAULT_KINDS, data_models
from p2psip.overlay.link_table import LinkTable
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Event, Membership
from p2psip.overlay.message import overlay_hash
from p2psip.overlay.messaging import Messenger
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.topology import ChordTopology

CONFIG = OverlayConfig(overlay_name="parts.test", request_timeout_seconds=5.0)
#: Fixed keys, so Node-IDs (and so ring positions) are the same in every run.
IDENTITIES = [NodeIdentity.from_secret(1000 + n) for n in range(8)]


class RecordingLink(Link):
    """A link whose sends are kept in ``sent``; ``close`` only marks it closed."""

    def __init__(
        self, clock: Clock, remote_address: str = "192.0.2.1:6084", inbound: bool = True
    ) -> None:
        self.peer_id = None
        self.remote_address = remote_address
        self.inbound = inbound
        self.created_at = self.last_received_at = self.last_sent_at = clock.seconds()
        self.messages_sent = self.messages_received = 0
        self.rtt_seconds = None
        self.closed = False
        self.path = "connect"
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.messages_sent += 1
        self.sent.append(data)

    def close(self) -> None:
        self.closed = True


class MessengerUnderTest:
    """One node's Messenger, its tables and a clock; ``membership`` starts ALONE."""

    def __init__(self, identity: NodeIdentity, config: OverlayConfig = CONFIG) -> None:
        self.clock = Clock()
        self.identity = identity
        self.node_id = identity.node_id
        self.counters = Counters()
        self.membership = Membership()
        self.membership.happened(Event.FOUNDED)
        self.topology = ChordTopology(self.node_id, config.successors, config.predecessors)
        self.links = LinkTable()
        self.certificates = CertificateCache()
        self.certificates.add_identity(identity)
        for other in IDENTITIES:
            self.certificates.add(other.certificate_der)
        self.messenger = Messenger(
            identity=identity,
            certificates=self.certificates,
            clock=self.clock,
            config=config,
            overlay=overlay_hash(config.overlay_name),
            topology=self.topology,
            links=self.links,
            membership=self.membership,
            counters=self.counters,
            data_models=data_models(DEFAULT_KINDS),
        )

    def link_to(self, peer: NodeIdentity | None) -> RecordingLink:
        """A link that is identified as ``peer``'s (or left unidentified for None)."""
        link = RecordingLink(self.clock)
        self.links.added(link)
        if peer is not None:
            self.links.identify(link, peer.node_id)
        return link


def sorted_identities(count: int) -> list[NodeIdentity]:
    """``count`` of the fixed identities in ring order."""
    return sorted(IDENTITIES[:count], key=lambda identity: identity.node_id)
