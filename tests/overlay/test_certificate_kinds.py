"""
Certificates in the overlay (RFC 6940 s8) on an enrolled ring: every node
stores its own as CERTIFICATE_BY_NODE, a super-node its user credentials'
as CERTIFICATE_BY_USER, and a peer that never met a signer's certificate
fetches it from there before it would drop the signer's value.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment.authority import OverlayAuthority
from p2psip.overlay.kinds import (
    CERTIFICATE_BY_NODE,
    CERTIFICATE_BY_USER,
    SIP_REGISTRATION,
    node_match_resource,
    user_match_resource,
)
from p2psip.overlay.node import OverlayNode
from p2psip.sip.location import Binding, OverlayLocationService
from p2psip.testing import TEST_CERTIFICATE_EPOCH, user_certificate
from tests.overlay.ringsim import RingSimulation

AOR = "sip:alice@example.com"
USER = "alice@example.com"
ALICE_RESOURCE = user_match_resource(USER)


class CertificateKindTests(SynchronousTestCase):
    def setUp(self) -> None:
        authority = OverlayAuthority.create("certificates.test", TEST_CERTIFICATE_EPOCH)
        self.sim = RingSimulation(seed=29, authority=authority)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(4):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 120)
        self.owner = self.node_for(ALICE_RESOURCE)
        self.server, self.reader = [n for n in self.sim.live() if n is not self.owner][:2]
        self.credential = self.server.add_user_certificate(
            user_certificate(authority, self.server.identity, USER)
        )
        binding = Binding(AOR, "sip:alice@192.0.2.10", 3600.0, 1.0, self.server.node_id)
        self.location = OverlayLocationService(self.server, self.sim.clock)
        self.sim.wait(self.location.register(AOR, [binding]))
        # A stabilisation round or two: every node has stored its certificates.
        self.sim.run(2 * self.sim.config.update_interval_seconds)

    def node_for(self, resource: int) -> OverlayNode:
        owner = self.sim.owner(resource)
        return next(node for node in self.sim.live() if node.node_id == owner)

    def certificates_at(self, resource: int, kind_id: int) -> list[bytes]:
        _, values = self.sim.wait(self.reader.fetch_values(resource, kind_id))
        return [value.value.value.value for value in values]

    def test_every_node_stores_its_certificate(self) -> None:
        """CERTIFICATE_BY_NODE at the hash of each node's Node-ID holds its certificate."""
        for node in self.sim.live():
            found = self.certificates_at(
                node_match_resource(node.node_id), CERTIFICATE_BY_NODE.kind_id
            )
            self.assertEqual(found, [node.identity.certificate_der])

    def test_super_node_stores_the_user_certificate(self) -> None:
        """CERTIFICATE_BY_USER at the user's Resource-ID holds the server's credential for alice."""
        found = self.certificates_at(ALICE_RESOURCE, CERTIFICATE_BY_USER.kind_id)
        self.assertEqual(found, [self.credential.certificate_der])

    def test_stored_again_every_half_lifetime(self) -> None:
        """Within half its lifetime a certificate is not stored again; after that it is."""

        def storage_time() -> int:
            _, [value] = self.sim.wait(
                self.reader.fetch_values(ALICE_RESOURCE, CERTIFICATE_BY_USER.kind_id)
            )
            return int(value.storage_time)

        first = storage_time()
        self.server.storage.maintain()
        self.sim.run(1)
        self.assertEqual(storage_time(), first)
        # As if half a day had passed since it was stored.
        published = self.server.storage._published
        for key in published:
            published[key] -= CERTIFICATE_BY_USER.max_lifetime_seconds / 2
        self.server.storage.maintain()
        self.sim.run(1)
        self.assertGreater(storage_time(), first)

    def test_unknown_signer_certificate_is_fetched(self) -> None:
        """A peer that never met alice's credential fetches it from the overlay to check her entry."""
        digest = self.credential.signer_identity().value
        # Neither the reader nor the responsible peer (whose Fetch answer
        # would carry it) remembers the certificate any more.
        self.reader.certificates._known.pop(digest, None)
        self.owner.certificates._known.pop(digest, None)
        entries = self.sim.wait(self.reader.get_dictionary(USER, SIP_REGISTRATION.kind_id))
        self.assertEqual(len(entries), 1)
        self.assertIn(digest, self.reader.certificates)
