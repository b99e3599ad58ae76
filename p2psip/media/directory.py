"""
Media relays found through the overlay (the MEDIA-RELAY usage,
:mod:`p2psip.usages.media_relay`).

A super-node that relays publishes its entry (its relay address and free
port pairs) at the well-known resource, signed with its node key, every
``PUBLISH_INTERVAL_SECONDS`` with a lifetime of three intervals, so a
relay that stops disappears from the list within half an hour, and takes
its entry out when it stops.  Every super-node refreshes the list of the
others with one Fetch on the same schedule (:meth:`RelayDirectory.refresh`),
so that a decision during call set-up reads a list in memory: the relays
with free ports, most free first (:meth:`RelayDirectory.relays`).  Entries
that do not decode are skipped and counted: they come from other nodes.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from p2psip.interfaces import ISuperNodeOverlay
from p2psip.usages.media_relay import (
    MEDIA_RELAY_KIND,
    MEDIA_RELAY_RESOURCE,
    MediaRelayEntry,
    decode_entries,
    encode_entry,
)
from p2psip.usages.sip import SIP_APPLICATION
from p2psip.util.ids import id_to_bytes
from p2psip.util.logs import Logger

#: How often a relay re-stores its entry and every node re-reads the list.
PUBLISH_INTERVAL_SECONDS = 600.0


class RelayDirectory:
    """This node's entry in the overlay's list of media relays, and the list as last read."""

    log = Logger()

    def __init__(self, node: ISuperNodeOverlay) -> None:
        self.node = node
        self.known: list[MediaRelayEntry] = []
        #: The SIP address of each known relay's super-node (AppAttach), by Node-ID.
        self.addresses: dict[int, tuple[str, int]] = {}
        #: Entries skipped because they did not decode.
        self.malformed = 0
        self.published = False

    @property
    def own_key(self) -> bytes:
        return id_to_bytes(self.node.local_node_id)

    def publish(self, media_address: str, free_pairs: int) -> Deferred[None]:
        """Store (or refresh) this node's entry; a failure is logged, not raised."""
        stored = cast(
            "Deferred[None]",
            self.node.put_dictionary_entry(
                MEDIA_RELAY_RESOURCE,
                MEDIA_RELAY_KIND,
                self.own_key,
                encode_entry(media_address, free_pairs),
                int(3 * PUBLISH_INTERVAL_SECONDS),
            ),
        )

        def done(_: object) -> None:
            self.published = True

        return stored.addCallbacks(done, self._failed, errbackArgs=("publish",))

    def withdraw(self) -> Deferred[None]:
        """Remove this node's entry (the relay stops)."""
        removed = cast(
            "Deferred[None]",
            self.node.remove_dictionary_entry(MEDIA_RELAY_RESOURCE, MEDIA_RELAY_KIND, self.own_key),
        )
        self.published = False
        return removed.addErrback(self._failed, "withdraw")

    def refresh(self) -> Deferred[None]:
        """Read the list of relays from the overlay (one Fetch)."""
        fetched = cast(
            "Deferred[dict[bytes, bytes]]",
            self.node.get_dictionary(MEDIA_RELAY_RESOURCE, MEDIA_RELAY_KIND),
        )
        return fetched.addCallbacks(self._read, self._failed, errbackArgs=("read",))

    def _read(self, entries: dict[bytes, bytes]) -> Deferred[None]:
        self.known, malformed = decode_entries(entries, skip=self.own_key)
        self.malformed += len(malformed)
        for why in malformed:
            self.log.debug("skipped a malformed MEDIA-RELAY entry: {why}", why=why)
        self.addresses = {n: a for n, a in self.addresses.items() if n in self._known_ids()}
        resolving = []
        for entry in self.known:
            resolved = cast(
                "Deferred[tuple[str, int]]",
                self.node.resolve_application(entry.node_id, SIP_APPLICATION),
            )
            resolved.addCallback(self._resolved, entry.node_id)
            resolved.addErrback(lambda failure: None)
            resolving.append(resolved)
        return DeferredList(resolving).addCallback(lambda _: None)

    def _known_ids(self) -> set[int]:
        return {entry.node_id for entry in self.known}

    def _resolved(self, address: tuple[str, int], node_id: int) -> None:
        self.addresses[node_id] = (address[0], address[1])

    def reachable(self) -> list[tuple[MediaRelayEntry, tuple[str, int]]]:
        """The relays with free ports whose SIP address is known, most free first."""
        return [
            (e, self.addresses[e.node_id]) for e in self.relays() if e.node_id in self.addresses
        ]

    def relays(self) -> list[MediaRelayEntry]:
        """The other relays with free ports, most free first."""
        return sorted(
            (entry for entry in self.known if entry.free_pairs > 0),
            key=lambda entry: (-entry.free_pairs, entry.node_id),
        )

    def _failed(self, failure: Failure, what: str) -> None:
        self.log.info(
            "could not {what} the overlay's list of media relays: {why}",
            what=what,
            why=failure.getErrorMessage(),
        )

    def status(self) -> dict[str, object]:
        return {
            "published": self.published,
            "other_relays": [
                {
                    "node": f"{entry.node_id:032x}"[:8],
                    "address": entry.media_address,
                    "free_pairs": entry.free_pairs,
                }
                for entry in self.relays()
            ],
        }
