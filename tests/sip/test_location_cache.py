"""Tests for the super-node's cache of fetched registrations and node addresses."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.location import Binding, OverlayLocationService
from p2psip.sip.location_cache import LocationCache
from p2psip.usages.sip import SIP_APPLICATION

from .memory_storage import MemoryOverlayStorage, StorageUnavailable

AOR = "sip:alice@example.org"
OTHER = "sip:bob@example.org"
NODE_A = 0x0123456789ABCDEF0123456789ABCDEF
NODE_B = 0xFEDCBA9876543210FEDCBA9876543210
NOW = 1_764_000_000.0


def binding(aor: str, expires_in: float = 3600.0) -> Binding:
    return Binding(
        aor=aor, contact=f"sip:{aor[4:9]}@192.0.2.7", expires_at=NOW + expires_in, node_id=NODE_B
    )


class LocationCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        # Node B's storage writes the entries; node A's cache reads them.
        self.entries: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] = {}
        applications = {(NODE_B, SIP_APPLICATION): ("192.0.2.2", 5060)}
        self.storage_b = MemoryOverlayStorage(NODE_B, self.clock, self.entries, applications)
        self.storage_a = MemoryOverlayStorage(NODE_A, self.clock, self.entries, applications)
        self.location_b = OverlayLocationService(self.storage_b, self.clock)
        self.location_a = OverlayLocationService(self.storage_a, self.clock)
        self.cache = LocationCache(
            self.location_a, self.storage_a, self.clock, max_entries=2, max_age_seconds=30
        )

    def register(self, aor: str, expires_in: float = 3600.0) -> None:
        self.successResultOf(self.location_b.register(aor, [binding(aor, expires_in)]))

    def fetches(self) -> int:
        return sum(1 for call in self.storage_a.calls if call[0] == "get")

    def lookup(self, aor: str = AOR) -> list[Binding]:
        result: list[Binding] = self.successResultOf(self.cache.lookup(aor))
        return result

    def test_repeated_lookup_needs_no_fetch(self) -> None:
        """A second lookup of the same AOR is answered from the cache."""
        self.register(AOR)
        first = self.lookup()
        self.assertEqual(self.lookup(), first)
        self.assertEqual(self.fetches(), 1)
        stats = self.cache.stats()
        self.assertEqual((stats["hits"], stats["misses"], stats["hit_rate"]), (1, 1, 0.5))

    def test_no_binding_is_not_cached(self) -> None:
        """An AOR without bindings is fetched again: a phone registering next is found at once."""
        self.assertEqual(self.lookup(), [])
        self.register(AOR)
        self.assertEqual(len(self.lookup()), 1)
        self.assertEqual(self.fetches(), 2)

    def test_max_age(self) -> None:
        """After max_age_seconds the overlay is asked again (a phone may have moved)."""
        self.register(AOR)
        self.lookup()
        self.clock.advance(31)
        self.lookup()
        self.assertEqual(self.fetches(), 2)

    def test_binding_expiry(self) -> None:
        """An entry is not used past its first binding's expiry."""
        self.register(AOR, expires_in=10)
        self.lookup()
        self.clock.advance(11)
        self.assertEqual(self.lookup(), [])
        self.assertEqual(self.fetches(), 2)

    def test_bounded(self) -> None:
        """The least recently used AOR goes first when the cache is full."""
        third = "sip:carol@example.org"
        for aor in (AOR, OTHER, third):
            self.register(aor)
            self.lookup(aor)
        self.assertEqual(self.cache.stats()["entries"], 2)
        self.assertEqual(self.cache.stats()["evictions"], 1)
        self.lookup(AOR)  # evicted: fetched again
        self.assertEqual(self.fetches(), 4)

    def test_invalidate(self) -> None:
        """An invalidated AOR is fetched again."""
        self.register(AOR)
        self.lookup()
        self.cache.invalidate(AOR)
        self.lookup()
        self.assertEqual(self.fetches(), 2)
        self.assertEqual(self.cache.stats()["invalidations"], 1)

    def test_one_fetch_for_concurrent_misses(self) -> None:
        """Lookups that miss while a fetch is in flight share that fetch."""
        self.register(AOR)
        pending: Deferred[dict[bytes, bytes]] = Deferred()
        real = self.storage_a.get_dictionary
        self.storage_a.get_dictionary = lambda *args: pending  # type: ignore[method-assign]
        first = self.cache.lookup(AOR)
        second = self.cache.lookup(AOR)
        self.assertNoResult(first)
        pending.callback(self.successResultOf(real("alice@example.org", 1)))
        self.assertEqual(self.successResultOf(first), self.successResultOf(second))

    def test_fetch_failure_reaches_every_waiter(self) -> None:
        """An overlay failure fails the lookups; nothing is cached."""
        self.storage_a.available = False
        self.failureResultOf(self.cache.lookup(AOR), StorageUnavailable)
        self.assertEqual(self.cache.stats()["entries"], 0)

    def test_hot_entry_refreshed_in_background(self) -> None:
        """A hot entry past half its life is fetched again while still being served."""
        self.register(AOR)
        for _ in range(4):
            self.lookup()
        self.assertEqual(self.fetches(), 1)
        self.clock.advance(16)
        self.lookup()  # served from the cache, refresh started
        self.assertEqual(self.fetches(), 2)
        self.assertEqual(self.cache.stats()["refreshes"], 1)
        self.clock.advance(20)  # past the old entry's age: the refreshed one serves
        self.lookup()
        self.assertEqual(self.fetches(), 2)

    def test_refresh_drops_an_unregistered_aor(self) -> None:
        """A background refresh that finds no binding removes the entry."""
        self.register(AOR)
        for _ in range(4):
            self.lookup()
        self.successResultOf(self.location_b.register(AOR, []))
        self.clock.advance(16)
        self.lookup()
        self.assertEqual(self.cache.stats()["entries"], 0)

    def test_node_addresses(self) -> None:
        """Super-node addresses are cached and forgotten on request."""
        self.assertEqual(self.successResultOf(self.cache.resolve(NODE_B)), ("192.0.2.2", 5060))
        self.successResultOf(self.cache.resolve(NODE_B))
        resolves = [call for call in self.storage_a.calls if call[0] == "resolve"]
        self.assertEqual(len(resolves), 1)
        self.cache.forget_node(NODE_B)
        self.successResultOf(self.cache.resolve(NODE_B))
        self.assertEqual(self.cache.stats()["address_misses"], 2)

    def test_disabled(self) -> None:
        """max_entries = 0: every lookup goes to the overlay."""
        cache = LocationCache(self.location_a, self.storage_a, self.clock, max_entries=0)
        self.register(AOR)
        self.successResultOf(cache.lookup(AOR))
        self.successResultOf(cache.lookup(AOR))
        self.assertEqual(self.fetches(), 2)
        self.assertFalse(cache.enabled)

    def test_bad_settings(self) -> None:
        self.assertRaises(
            ValueError, LocationCache, self.location_a, self.storage_a, self.clock, max_entries=-1
        )
