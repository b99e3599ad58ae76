"""
A super-node's cache of the registrations it fetched from the overlay.

Without it every call to an AOR served elsewhere costs two overlay round
trips before the INVITE leaves: a Fetch of the AOR's SIP-REGISTRATION
dictionary (routed through the ring to the responsible peer) and an
AppAttach to the serving super-node for its SIP address.  That is the
"slow search" of P2P-SIP.  A phone registers for an hour and re-registers
at the same super-node, so the answer to both questions rarely changes; the
cache keeps both and a repeated call needs no overlay message at all.

What keeps it right:

* **Bounded.** At most ``max_entries`` AORs and as many node addresses,
  least recently used first out.
* **Expiry.** An entry is used until the earliest of: the first of its
  bindings expires, ``max_age_seconds`` after it was fetched.  The age
  bound is what lets a phone that moved to another super-node, or a
  second phone registered elsewhere, be found again without any signal.
* **Invalidation.** The proxy calls :meth:`LocationCache.invalidate` when
  the serving super-node answers that the user is gone (404, 410, 480) or
  the branch failed (408, 5xx, an unreachable node), and
  :meth:`LocationCache.forget_node` when a node's address could not be
  reached; the next call fetches again.
* **Background refresh.** An entry hit ``hot_hits`` times that is past
  ``refresh_fraction`` of its life is fetched again while the old one is
  still served, so a hot AOR never waits for the overlay.
* **One fetch per AOR.** Lookups that miss while a fetch of the same AOR
  is in flight wait for that fetch, so a burst of calls to one user costs
  one overlay Fetch.

Negative answers (no binding) are not cached: a phone that registers a
moment later must be reachable at once.  ``max_entries = 0`` switches the
cache off (every lookup goes to the overlay), which is what
``sip-location-cache = 0`` does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.interfaces import IOverlayStorage
from p2psip.sip.location import Binding, OverlayLocationService
from p2psip.usages.sip import SIP_APPLICATION
from p2psip.util.logs import Logger

__all__ = [
    "DEFAULT_MAX_AGE_SECONDS",
    "DEFAULT_MAX_ENTRIES",
    "LocationCache",
]

#: AORs (and as many node addresses) kept by default: a few MiB at most.
DEFAULT_MAX_ENTRIES = 10_000
#: The longest an entry is trusted without a signal: how long a phone that
#: moved to another super-node may stay unreachable from here.
DEFAULT_MAX_AGE_SECONDS = 30.0
#: Hits after which an entry counts as hot (refreshed before it runs out).
DEFAULT_HOT_HITS = 3
#: Share of an entry's life after which a hot entry is fetched again.
DEFAULT_REFRESH_FRACTION = 0.5


@define
class _Entry:
    """One cached answer: the live bindings, when fetched, until when usable."""

    value: object
    fetched_at: float
    usable_until: float
    hits: int = 0
    refreshing: bool = False


class _Table:
    """An LRU table of entries with deadlines; sans-IO (``now`` is passed in)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[object, _Entry] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: object, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.usable_until <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: object, value: object, now: float, usable_until: float) -> None:
        if self.max_entries <= 0 or usable_until <= now:
            self._entries.pop(key, None)
            return
        self._entries[key] = _Entry(value, now, usable_until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def pop(self, key: object) -> bool:
        return self._entries.pop(key, None) is not None


class LocationCache:
    """
    ``lookup`` and ``resolve`` as the overlay answers them, remembered.

    It has the lookup of :class:`~p2psip.sip.location.OverlayLocationService`
    (live bindings of an AOR, best q first) and the SIP address of a
    super-node (``IOverlayStorage.resolve_application``), each answered from
    the cache when it can.  The counters (:meth:`stats`) go to ``/status``
    and ``/metrics``.
    """

    log = Logger()

    def __init__(
        self,
        location: OverlayLocationService,
        storage: IOverlayStorage,
        clock: IReactorTime,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        hot_hits: int = DEFAULT_HOT_HITS,
        refresh_fraction: float = DEFAULT_REFRESH_FRACTION,
    ) -> None:
        if max_entries < 0 or max_age_seconds <= 0:
            raise ValueError("the location cache needs max_entries >= 0 and a positive max age")
        self.location = location
        self.storage = storage
        self.clock = clock
        self.max_age_seconds = max_age_seconds
        self.hot_hits = hot_hits
        self.refresh_fraction = refresh_fraction
        self._bindings = _Table(max_entries)
        self._addresses = _Table(max_entries)
        self._fetching: dict[str, list[Deferred[list[Binding]]]] = {}
        self.hits = 0
        self.misses = 0
        self.refreshes = 0
        self.invalidations = 0
        self.address_hits = 0
        self.address_misses = 0

    @property
    def enabled(self) -> bool:
        return self._bindings.max_entries > 0

    # -- AOR bindings --------------------------------------------------------

    def lookup(self, aor: str) -> Deferred[list[Binding]]:
        """Every live binding of ``aor``, from the cache or the overlay."""
        now = self.clock.seconds()
        entry = self._bindings.get(aor, now)
        if entry is not None:
            live = [b for b in cast("list[Binding]", entry.value) if b.expires_at > now]
            if live:
                self.hits += 1
                entry.hits += 1
                self._maybe_refresh(aor, entry, now)
                return succeed(live)
            self._bindings.pop(aor)
        self.misses += 1
        waiting: Deferred[list[Binding]] = Deferred()
        if aor in self._fetching:
            self._fetching[aor].append(waiting)
        else:
            self._fetching[aor] = [waiting]
            self._fetch(aor)
        return waiting

    def _fetch(self, aor: str) -> None:
        self.location.lookup(aor).addCallbacks(
            self._fetched, self._fetch_failed, callbackArgs=(aor,), errbackArgs=(aor,)
        )

    def _fetched(self, bindings: list[Binding], aor: str) -> None:
        self._remember(aor, bindings)
        for waiting in self._fetching.pop(aor, []):
            waiting.callback(list(bindings))

    def _fetch_failed(self, failure: Failure, aor: str) -> None:
        for waiting in self._fetching.pop(aor, []):
            waiting.errback(failure)

    def _remember(self, aor: str, bindings: list[Binding]) -> None:
        now = self.clock.seconds()
        if not bindings:
            self._bindings.pop(aor)  # a phone registering next must be found at once
            return
        usable_until = min(now + self.max_age_seconds, min(b.expires_at for b in bindings))
        self._bindings.put(aor, list(bindings), now, usable_until)

    def _maybe_refresh(self, aor: str, entry: _Entry, now: float) -> None:
        """Fetch a hot entry again before it runs out (the old one is served meanwhile)."""
        if entry.refreshing or entry.hits < self.hot_hits:
            return
        life = entry.usable_until - entry.fetched_at
        if now - entry.fetched_at < life * self.refresh_fraction:
            return
        entry.refreshing = True
        self.refreshes += 1

        def refreshed(bindings: list[Binding]) -> None:
            if self._bindings.get(aor, self.clock.seconds()) is entry:
                self._remember(aor, bindings)

        def refresh_failed(failure: Failure) -> None:
            entry.refreshing = False  # the next hit tries again; the entry runs out as before
            self.log.debug(
                "background refresh of a cached registration failed: {why}",
                why=failure.getErrorMessage(),
            )

        self.location.lookup(aor).addCallbacks(refreshed, refresh_failed)

    def invalidate(self, aor: str) -> None:
        """Forget ``aor`` (its holder said it is gone, or the call failed)."""
        if self._bindings.pop(aor):
            self.invalidations += 1

    # -- super-node addresses --------------------------------------------------

    def resolve(self, node_id: int) -> Deferred[tuple[str, int]]:
        """The SIP address super-node ``node_id`` announced (AppAttach), cached."""
        now = self.clock.seconds()
        entry = self._addresses.get(node_id, now)
        if entry is not None:
            self.address_hits += 1
            return succeed(cast("tuple[str, int]", entry.value))
        self.address_misses += 1
        resolving = cast(
            "Deferred[tuple[str, int]]",
            self.storage.resolve_application(node_id, SIP_APPLICATION),
        )

        def resolved(address: tuple[str, int]) -> tuple[str, int]:
            at = self.clock.seconds()
            self._addresses.put(node_id, address, at, at + self.max_age_seconds)
            return address

        return resolving.addCallback(resolved)

    def forget_node(self, node_id: int) -> None:
        """Forget where ``node_id`` serves SIP (it could not be reached there)."""
        self._addresses.pop(node_id)

    # -- status ----------------------------------------------------------------

    def stats(self) -> dict[str, float | int | None]:
        """The counters and sizes for ``/status`` and ``/metrics``."""
        lookups = self.hits + self.misses
        return {
            "entries": len(self._bindings),
            "node_addresses": len(self._addresses),
            "max_entries": self._bindings.max_entries,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
            "refreshes": self.refreshes,
            "invalidations": self.invalidations,
            "evictions": self._bindings.evictions,
            "address_hits": self.address_hits,
            "address_misses": self.address_misses,
        }
