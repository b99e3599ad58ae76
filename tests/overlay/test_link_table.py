"""The link table: identification, the link to use for a peer, and which losses are failures."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.link_table import LinkTable
from tests.overlay.parts import RecordingLink

PEER = 0xABC


class LinkTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.table = LinkTable()

    def link(self) -> RecordingLink:
        link = RecordingLink(self.clock)
        self.table.added(link)
        return link

    def test_identify_once(self) -> None:
        """A link is filed under the first Node-ID that identifies it, and only that one."""
        link = self.link()
        self.assertEqual(self.table.unidentified(), [link])
        self.assertTrue(self.table.identify(link, PEER))
        self.assertFalse(self.table.identify(link, PEER + 1))
        self.assertEqual((self.table.links_to(PEER), self.table.unidentified()), ([link], []))
        self.assertEqual(link.peer_id, PEER)

    def test_tls_link_arrives_identified(self) -> None:
        """A link whose handshake proved its peer is filed under it at once and keeps it."""
        link = RecordingLink(self.clock)
        link.peer_id = PEER
        self.table.added(link)
        self.assertEqual((self.table.links_to(PEER), self.table.unidentified()), ([link], []))
        self.assertFalse(self.table.identify(link, PEER + 1))
        self.assertEqual((link.peer_id, self.table.links_to(PEER + 1)), (PEER, []))

    def test_confirmed_links_come_first(self) -> None:
        """A link only a request named is used for its peer only while no confirmed link exists."""
        real, claimed = self.link(), self.link()
        self.table.identify(real, PEER)
        self.table.identify(claimed, PEER, confirmed=False)
        claimed.last_received_at = self.clock.seconds() + 5
        self.assertFalse(self.table.is_confirmed(claimed))
        self.assertIs(self.table.link_for(PEER), real)
        real.closed = True
        self.assertIs(self.table.link_for(PEER), claimed)
        self.table.confirm(claimed)
        self.assertTrue(self.table.is_confirmed(claimed))

    def test_prefers_the_link_that_last_heard_from_the_peer(self) -> None:
        """Of two links to a peer, the one that received last is used; closed ones never."""
        old, new = self.link(), self.link()
        self.table.identify(old, PEER)
        self.clock.advance(10)
        self.table.identify(new, PEER)
        new.last_received_at = self.clock.seconds()
        self.assertIs(self.table.link_for(PEER), new)
        new.closed = True
        self.assertIs(self.table.link_for(PEER), old)

    def test_only_the_last_lost_link_is_a_failure(self) -> None:
        """Losing one of two links is not a failure; losing the last one is; a removed link never is."""
        first, second, dropped = self.link(), self.link(), self.link()
        for link in (first, second, dropped):
            self.table.identify(link, PEER)
        self.table.remove(dropped)
        self.assertFalse(self.table.lost(dropped))
        self.assertFalse(self.table.lost(first))
        self.assertTrue(self.table.lost(second))
        self.assertFalse(self.table.has_link(PEER))
        self.assertEqual(self.table.peers(), [])

    def test_unidentified_loss_is_not_a_failure(self) -> None:
        """A connection that closes before anyone said who they are is simply forgotten."""
        link = self.link()
        self.assertFalse(self.table.lost(link))
        self.assertEqual(len(self.table), 0)
