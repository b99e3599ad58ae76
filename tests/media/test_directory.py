"""Media relays found through the overlay: the MEDIA-RELAY Kind on a ring of real nodes in memory."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.media.directory import RelayDirectory
from p2psip.overlay.codec import DecodeError
from p2psip.overlay.message import ErrorCode
from p2psip.usages.media_relay import (
    MEDIA_RELAY_KIND,
    MEDIA_RELAY_RESOURCE,
    decode_entry,
    encode_entry,
)
from p2psip.util.ids import id_to_bytes
from tests.overlay.ringsim import RingSimulation


class EntryCodecTests(SynchronousTestCase):
    def test_round_trip_and_garbage(self) -> None:
        """An entry decodes to what was encoded; a bad key, version, address or tail does not."""
        key = id_to_bytes(0x1234)
        entry = decode_entry(key, encode_entry("198.51.100.7", 250))
        self.assertEqual(
            (entry.node_id, entry.media_address, entry.free_pairs), (0x1234, "198.51.100.7", 250)
        )
        good = encode_entry("198.51.100.7", 250)
        for bad_key, value in (
            (b"short", good),
            (key, b"\x02" + good[1:]),
            (key, good + b"x"),
            (key, encode_entry("not-an-ip", 1)),
            (key, b""),
        ):
            self.assertRaises(DecodeError, decode_entry, bad_key, value)


class DirectoryRingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=47)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(3):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)
        self.sim.run(2 * self.sim.config.update_interval_seconds)

    def test_relays_publish_and_are_found(self) -> None:
        """Two relays store their entries; a third node reads both, most free ports first."""
        first, second, reader = self.sim.live()[:3]
        self.sim.wait(RelayDirectory(first).publish("198.51.100.1", 10))
        self.sim.wait(RelayDirectory(second).publish("198.51.100.2", 200))
        directory = RelayDirectory(reader)
        self.sim.wait(directory.refresh())
        self.assertEqual(
            [(e.node_id, e.media_address) for e in directory.relays()],
            [(second.node_id, "198.51.100.2"), (first.node_id, "198.51.100.1")],
        )
        self.sim.wait(RelayDirectory(first).withdraw())
        self.sim.wait(directory.refresh())
        self.assertEqual([e.node_id for e in directory.relays()], [second.node_id])

    def test_nobody_writes_another_relays_entry(self) -> None:
        """NODE-KEY-MATCH: an entry under another node's Node-ID is refused with Error_Forbidden."""
        victim, mallory = self.sim.live()[:2]
        stored = mallory.put_dictionary_entry(
            MEDIA_RELAY_RESOURCE,
            MEDIA_RELAY_KIND,
            id_to_bytes(victim.node_id),
            encode_entry("203.0.113.66", 65535),
            600,
        )
        [failure] = self.sim.wait(stored.addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
