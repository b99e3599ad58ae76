"""The known-peers file a node keeps in its data directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import peer_cache
from p2psip.overlay.peer_cache import KnownPeer

PEERS = [KnownPeer(0x1234, "192.0.2.7", 6084), KnownPeer(2**128 - 1, "2001:db8::5", 7000)]


class KnownPeersFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def warnings(self) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("log_level") == LogLevel.warn]

    def test_round_trip(self) -> None:
        """What is saved is loaded back, in order."""
        peer_cache.save(self.directory, PEERS)
        self.assertEqual(peer_cache.load(self.directory), PEERS)

    def test_endpoint_escapes_ipv6(self) -> None:
        """An IPv6 peer becomes a client endpoint string with its colons escaped."""
        self.assertEqual(PEERS[1].endpoint, "tcp:host=2001\\:db8\\:\\:5:port=7000")

    def test_missing_file_is_empty(self) -> None:
        """No file yet (first start) means no known peers and no warning."""
        self.assertEqual(peer_cache.load(self.directory), [])
        self.assertEqual(self.warnings(), [])

    def test_corrupt_file_is_ignored_loudly(self) -> None:
        """A corrupt file is ignored with a warning naming it."""
        (self.directory / peer_cache.FILE_NAME).write_text("{not json")
        self.assertEqual(peer_cache.load(self.directory), [])
        [warning] = self.warnings()
        self.assertIn(peer_cache.FILE_NAME, str(warning["path"]))

    def test_bad_entries_are_refused(self) -> None:
        """Entries without a valid id, host or port make the file unusable, not a crash."""
        for entry in (
            {"node_id": "zz", "host": "h", "port": 1},
            {"node_id": "01", "host": "", "port": 1},
            {"node_id": "01", "host": "h", "port": 70000},
            {"node_id": "01", "host": "h", "port": True},
            "peer",
        ):
            document = {"version": 1, "peers": [entry]}
            with self.assertRaises(ValueError):
                peer_cache.decode(json.dumps(document).encode())

    def test_size_is_bounded(self) -> None:
        """At most MAX_KNOWN_PEERS are kept, and a huge file is refused before parsing."""
        many = [KnownPeer(i + 1, "192.0.2.1", 6084) for i in range(100)]
        peer_cache.save(self.directory, many)
        self.assertEqual(len(peer_cache.load(self.directory)), peer_cache.MAX_KNOWN_PEERS)
        with self.assertRaises(ValueError):
            peer_cache.decode(b" " * (peer_cache.MAX_FILE_BYTES + 1))

    def test_unwritable_directory_names_the_path(self) -> None:
        """A save that cannot write says which file and what to check."""
        if os.geteuid() == 0:
            missing = self.directory / "absent"
            error = self.assertRaises(Exception, peer_cache.save, missing, PEERS)
        else:
            self.directory.chmod(0o500)
            self.addCleanup(self.directory.chmod, 0o700)
            error = self.assertRaises(Exception, peer_cache.save, self.directory, PEERS)
        self.assertIn(peer_cache.FILE_NAME, str(error))
        self.assertIn("writable", str(error))
