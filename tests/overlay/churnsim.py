"""
Churn on a ring of real overlay nodes on one fake clock: the harness behind
``bench/churn.py`` and ``tests/overlay/test_churn.py``.

Peers fail abruptly (a power cut: their links go silent, see
:meth:`RingSimulation.crash`) after sessions drawn from an exponential
distribution with a given median, as in the Bamboo study (Rhea et al.,
"Handling Churn in a DHT", USENIX 2004: medians of 1.4 minutes to hours).
Each failed peer comes back after a short down time with the same key and
address, as a restarted process with the same data directory does: it
takes back the DHT values it had saved (a real state database per peer,
flushed every second; what it staged since the last flush is lost) and
joins through the configured bootstrap and then the peers it knew
(``known-peers.json``); the founding peer churns like the others, so the
bootstrap is lost again and again and joins must go through cached peers.

While the ring churns, the harness keeps doing what users of the ring do:

* **lookups** of random ids from random peers: success, and whether the
  answer came from the peer that truly owns the id at that moment; a
  lookup whose asking peer fails while it is in flight is counted apart
  ("origin failed"), not as the ring's failure (fetches and calls too);
* **values**: stored from random peers, fetched back from random peers;
* **registrations** of phones: each phone registers (a value under a name
  of its own, with a lifetime of ``registration_expiry``) through one
  super-node and refreshes at half the expiry, moving to another peer when
  its super-node is gone; **calls** fetch a random phone's registration
  from a random peer and succeed when it is found and its super-node is
  up (the SIP layer on top only adds AppAttach and the hop to that node);
* **repair**: per failure, the time until no live peer keeps the dead one
  among its successors or predecessors;
* **traffic**: bytes sent over every link by message code, reported per
  live peer per second; maintenance is everything but Store, Fetch and
  Stat (which include replication and hand-over, counted apart).

At the end the churn stops, the ring settles, and every value and every
registration still within its lifetime is fetched: any not found is lost.
"""

from __future__ import annotations

import bisect
import math
import random
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from attrs import define, field
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from p2psip.overlay.message import MessageCode, peek_code
from p2psip.overlay.node import NodeState, OperationResult, OverlayConfig, OverlayNode
from p2psip.overlay.value_persistence import ValuePersistence
from p2psip.util.ids import id_hex, id_short
from p2psip.util.state_db import FLUSH_INTERVAL_SECONDS, StateDatabase

from .ringsim import PORT, RingSimulation

#: The production timers (OverlayConfig's defaults), in a ring of its own name.
CHURN_CONFIG = OverlayConfig(overlay_name="churn.test")
#: Codes whose bytes are storage (user operations, replication, hand-over), not maintenance.
STORAGE_CODES = frozenset(
    {
        MessageCode.STORE_REQ,
        MessageCode.STORE_ANS,
        MessageCode.FETCH_REQ,
        MessageCode.FETCH_ANS,
        MessageCode.STAT_REQ,
        MessageCode.STAT_ANS,
    }
)


@define
class ChurnSettings:
    """One churn run."""

    peers: int = 50
    median_session_seconds: float = 600.0
    #: Simulated seconds of churn, after the ring is built and loaded.
    churn_seconds: float = 1800.0
    #: Down time of a failed peer before it restarts: uniform in this range.
    down_seconds: tuple[float, float] = (5.0, 60.0)
    lookups_per_second: float = 2.0
    values: int = 100
    value_fetches_per_second: float = 1.0
    phones: int = 100
    registration_expiry_seconds: int = 600
    calls_per_second: float = 1.0
    seed: int = 2026
    config: OverlayConfig = CHURN_CONFIG
    #: Simulated seconds the ring settles after the churn, before the audit.
    settle_seconds: float = 180.0
    #: Seconds into the churn when the founding peer (every peer's
    #: configured bootstrap) fails for good, on top of the churn; None: it churns like the others.
    bootstrap_fails_at: float | None = 60.0
    #: A restarted peer keeps its data dir, so it takes back the DHT values
    #: it held (``overlay/value_persistence.py``, flushed every second as
    #: the roles do); False: it comes back empty.
    keep_values: bool = True


@define
class Phone:
    name: str
    node_id: int | None = None
    #: Name of the registration's value (one per super-node, signed by it).
    value_name: str | None = None
    #: When the last acknowledged registration or refresh expires.
    expires_at: float = 0.0
    registering: bool = False


@define
class ChurnReport:
    """What one run measured."""

    settings: ChurnSettings
    lookups: int = 0
    lookups_failed: int = 0
    #: Lookups whose asking peer failed while they were in flight: not
    #: counted in ``lookups`` (nobody is left to be answered).
    lookups_origin_failed: int = 0
    wrong_node: int = 0
    fetches: int = 0
    fetches_failed: int = 0
    #: Fetches (and calls' fetches) whose asking peer failed in flight: not counted.
    fetches_origin_failed: int = 0
    fetch_misses: int = 0
    registrations: int = 0
    registrations_failed: int = 0
    calls: int = 0
    calls_failed: Counter[str] = field(factory=Counter)
    failures: int = 0
    joins: int = 0
    joins_failed: int = 0
    joins_without_bootstrap: int = 0
    #: When the bootstrap failed for good (None: it did not).
    bootstrap_failed_at: float | None = None
    repair_seconds: list[float] = field(factory=list)
    unrepaired: int = 0
    bytes_by_code: Counter[int] = field(factory=Counter)
    peer_seconds: float = 0.0
    values_audited: int = 0
    values_lost: int = 0
    registrations_audited: int = 0
    registrations_lost: int = 0
    live_at_end: int = 0
    #: Resources restarted peers took back from their data dirs.
    values_restored: int = 0
    failure_reasons: Counter[str] = field(factory=Counter)
    #: One line per failed lookup: when, from where, for what, who owned
    #: it, and the failed peer whose range it was (bench/churn.py --details).
    lookup_failures: list[str] = field(factory=list)

    @property
    def lookup_success(self) -> float:
        return 1 - self.lookups_failed / self.lookups if self.lookups else 1.0

    @property
    def call_success(self) -> float:
        return 1 - sum(self.calls_failed.values()) / self.calls if self.calls else 1.0

    def bytes_per_peer_second(self, maintenance: bool) -> float:
        total = sum(
            n
            for code, n in self.bytes_by_code.items()
            if (code not in STORAGE_CODES) == maintenance
        )
        return total / self.peer_seconds if self.peer_seconds else 0.0

    def repair_percentile(self, fraction: float) -> float:
        if not self.repair_seconds:
            return 0.0
        ordered = sorted(self.repair_seconds)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _reason(failure: Failure) -> str:
    name = type(failure.value).__name__
    if name == "RequestFailed":
        # The error's reason, without the ids that make every one different.
        return f"{name} ({failure.getErrorMessage().split(':')[-1].strip()[:60]})"
    return name


class ChurnRun:
    """Builds the ring, churns it while users use it, and audits what it kept."""

    def __init__(self, settings: ChurnSettings) -> None:
        self.settings = settings
        self.sim = RingSimulation(config=settings.config, seed=settings.seed)
        self.random = random.Random(settings.seed + 1)
        self.report = ChurnReport(settings)
        self.churning = False
        #: The endpoint every peer is configured with (the founder's address).
        self.bootstrap = ""
        self.values: dict[str, bytes] = {}
        self.phones: list[Phone] = []
        #: Dead peers whose repair is being timed: id -> time of failure.
        self._repairing: dict[int, float] = {}
        #: Every failure: id -> time of its latest failure.
        self._failed_at: dict[int, float] = {}
        self._bootstrap_gone = False
        self.sim.network.traffic_observer = self._count_traffic
        #: Each peer's data dir (its state database), kept across its restarts.
        self._data_dir: tempfile.TemporaryDirectory[str] | None = None
        self._databases: dict[int, StateDatabase] = {}
        #: The live instance's flush round, per Node-ID.
        self._flushing: dict[int, LoopingCall] = {}

    # -- scheduling ------------------------------------------------------

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        self.sim.clock.callLater(delay, action)

    def _poisson(self, rate: float, action: Callable[[], None]) -> None:
        """Run ``action`` at the times of a Poisson process of ``rate`` per second, while churning."""
        if rate <= 0:
            return

        def fire() -> None:
            if not self.churning:
                return
            action()
            self._later(self.random.expovariate(rate), fire)

        self._later(self.random.expovariate(rate), fire)

    def _session_seconds(self) -> float:
        # Exponential with the given median: mean = median / ln 2.
        return self.random.expovariate(math.log(2) / self.settings.median_session_seconds)

    def _count_traffic(self, data: bytes) -> None:
        try:
            _, code = peek_code(data, self.settings.config.limits)
        except Exception:
            return
        self.report.bytes_by_code[code] += len(data)

    # -- the ring ----------------------------------------------------------

    def build(self) -> None:
        """Found the ring, join the peers, store the values and register the phones."""
        self.sim.grow(self.settings.peers)
        self.bootstrap = RingSimulation.endpoint(self.sim.nodes[0])
        self.sim.run_until(self.sim.consistent, 600.0)
        for node in self.sim.nodes:
            self._open_data_dir(node)
        for index in range(self.settings.values):
            name = f"value{index}"
            value = f"v{index}".encode()
            self.sim.wait(self.random.choice(self.sim.live()).put(name, value))
            self.values[name] = value
        self.phones = [Phone(f"phone{index}") for index in range(self.settings.phones)]
        for phone in self.phones:
            self._register(phone)
        self.sim.run(30.0)

    # -- data dirs ---------------------------------------------------------

    def _open_data_dir(self, node: OverlayNode) -> None:
        """
        Give ``node`` its data dir's values, as a role started on it does:
        put back what was saved (before the node joins), then save the
        store's changes every flush interval.
        """
        if not self.settings.keep_values:
            return
        if self._data_dir is None:
            self._data_dir = tempfile.TemporaryDirectory(prefix="churn-")
        database = self._databases.get(node.node_id)
        if database is None:
            path = Path(self._data_dir.name) / f"{id_hex(node.node_id)[:16]}.sqlite3"
            database = self._databases[node.node_id] = StateDatabase.open(path)
        values = ValuePersistence(
            database,
            node.storage,
            node.membership,
            node.certificates,
            self.sim.clock,
            self.settings.config.limits,
        )
        values.startService()
        self.report.values_restored += values.restored

        def flush() -> None:
            values.stage_changes()
            database.flush()

        loop = LoopingCall(flush)
        loop.clock = self.sim.clock
        loop.start(FLUSH_INTERVAL_SECONDS, now=False)
        self._flushing[node.node_id] = loop

    def _power_cut(self, node: OverlayNode) -> None:
        """``node`` fails abruptly: what it saved stays, what it staged since the last flush is lost."""
        self.sim.crash(node)
        loop = self._flushing.pop(node.node_id, None)
        if loop is not None and loop.running:
            loop.stop()
        database = self._databases.get(node.node_id)
        if database is not None:
            database.take_staged()

    def _close_data_dirs(self) -> None:
        for loop in self._flushing.values():
            if loop.running:
                loop.stop()
        self._flushing.clear()
        for database in self._databases.values():
            database.close()
        self._databases.clear()
        if self._data_dir is not None:
            self._data_dir.cleanup()
            self._data_dir = None

    def _live(self) -> list[OverlayNode]:
        return self.sim.live()

    def _gone(self, node: OverlayNode) -> bool:
        """``node`` failed (or is failing: its requests fail as it stops) since it was chosen."""
        return node.state == NodeState.STOPPED or node not in self.sim.nodes

    def _is_up(self, node_id: int | None) -> bool:
        return any(n.node_id == node_id for n in self._live())

    def _schedule_failure(self, node: OverlayNode) -> None:
        def fail() -> None:
            if not self.churning or node not in self.sim.nodes:
                return
            if node.state != NodeState.JOINED or len(self._live()) <= 3:
                self._schedule_failure(node)
                return
            self._fail(node)

        self._later(self._session_seconds(), fail)

    def _fail(self, node: OverlayNode) -> None:
        cached = [
            f"tcp:{host}:{port}"
            for peer, host, port in node.known_peer_addresses()
            if peer != node.node_id
        ]
        self.random.shuffle(cached)
        self._power_cut(node)
        self.report.failures += 1
        self._repairing[node.node_id] = self._failed_at[node.node_id] = self.sim.clock.seconds()
        low, high = self.settings.down_seconds
        if RingSimulation.endpoint(node) == self.bootstrap and self._bootstrap_gone:
            return
        self._later(self.random.uniform(low, high), lambda: self._restart(node, cached[:8]))

    def _lose_bootstrap(self) -> None:
        """The founder's machine is gone for good: nobody can join through the configured bootstrap."""
        founder = [n for n in self.sim.nodes if RingSimulation.endpoint(n) == self.bootstrap]
        self.report.bootstrap_failed_at = self.sim.clock.seconds()
        if founder:
            self._power_cut(founder[0])
            self.report.failures += 1
            self._repairing[founder[0].node_id] = self.sim.clock.seconds()
            self._failed_at[founder[0].node_id] = self.sim.clock.seconds()
        self._bootstrap_gone = True

    def _restart(self, old: OverlayNode, cached: list[str]) -> None:
        """The failed peer's process starts again with its data dir: bootstrap first, then its known peers."""
        if RingSimulation.endpoint(old) == self.bootstrap and self._bootstrap_gone:
            return
        own = RingSimulation.endpoint(old)
        via = [self.bootstrap, *(c for c in cached if c != own and c != self.bootstrap)]
        node = self.sim._new_node(old.identity, old.advertised_host)
        self.sim.crashed.remove(old)
        self._open_data_dir(node)
        bootstrap_up = any(
            RingSimulation.endpoint(n) == self.bootstrap for n in self._live() if n is not old
        )

        def joined(_: object) -> None:
            self.report.joins += 1
            if not bootstrap_up:
                self.report.joins_without_bootstrap += 1
            self.sim.nodes.append(node)
            self._repairing.pop(node.node_id, None)
            if self.churning:
                self._schedule_failure(node)

        def failed(failure: Failure) -> None:
            self.report.joins_failed += 1
            self.report.failure_reasons[f"join: {_reason(failure)}"] += 1
            node.stop()
            self.sim.network.crash(node.advertised_host, PORT)
            loop = self._flushing.pop(node.node_id, None)
            if loop is not None and loop.running:
                loop.stop()
            self.sim.crashed.append(old)
            if self.churning:
                self._later(10.0, lambda: self._restart(old, cached))

        node.join(via).addCallbacks(joined, failed)

    def _check_repairs(self) -> None:
        now = self.sim.clock.seconds()
        for dead, since in list(self._repairing.items()):
            if self._is_up(dead):
                del self._repairing[dead]
                continue
            remembered = any(
                dead in n.topology.successors or dead in n.topology.predecessors
                for n in self._live()
            )
            if not remembered:
                self.report.repair_seconds.append(now - since)
                del self._repairing[dead]
        if self.churning:
            self._later(1.0, self._check_repairs)

    # -- what users do -----------------------------------------------------

    def _lookup(self) -> None:
        live = self._live()
        origin = self.random.choice(live)
        target = self.random.getrandbits(128)
        self.report.lookups += 1

        def answered(result: OperationResult) -> None:
            if self._is_up(result.responsible) and result.responsible != self.sim.owner(target):
                self.report.wrong_node += 1

        sent_at = self.sim.clock.seconds()

        def failed(failure: Failure) -> None:
            if self._gone(origin):
                # The asker crashed with the lookup in flight: nobody is left
                # to be answered, so it is neither a success nor the ring's failure.
                self.report.lookups -= 1
                self.report.lookups_origin_failed += 1
                return
            self.report.lookups_failed += 1
            self.report.failure_reasons[f"lookup: {_reason(failure)}"] += 1
            self.report.lookup_failures.append(
                self._describe_failed_lookup(origin, target, sent_at, failure)
            )

        origin.lookup_id(target).addCallbacks(answered, failed)

    def _describe_failed_lookup(
        self, origin: OverlayNode, target: int, sent_at: float, failure: Failure
    ) -> str:
        """Where a lookup failed: the owner, and the dead peer whose range it was, if one."""
        now = self.sim.clock.seconds()
        live = {n.node_id for n in self._live()}
        # The peer that would own the target had the peers failed in the
        # last two minutes still been up: a dead one means a just-failed range.
        recent = {p for p, at in self._failed_at.items() if sent_at - at < 120 and p not in live}
        ring = sorted(live | recent)
        owner_then = ring[bisect.bisect_left(ring, target) % len(ring)] if ring else None
        dead = (
            f"range of {id_short(owner_then)}, failed {sent_at - self._failed_at[owner_then]:.1f} s before"
            if owner_then in recent
            else "range of a live peer"
        )
        return (
            f"t={sent_at:.1f} s +{now - sent_at:.1f} s: from {id_short(origin.node_id)} for "
            f"{id_short(target)} (owner {id_short(self.sim.owner(target))}; {dead}): "
            f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        )

    def _fetch_value(self) -> None:
        name = self.random.choice(sorted(self.values))
        self.report.fetches += 1

        def answered(result: OperationResult) -> None:
            if not result.found or result.value != self.values[name]:
                self.report.fetch_misses += 1

        origin = self.random.choice(self._live())

        def failed(failure: Failure) -> None:
            if self._gone(origin):
                self.report.fetches -= 1
                self.report.fetches_origin_failed += 1
                return
            self.report.fetches_failed += 1
            self.report.failure_reasons[f"fetch: {_reason(failure)}"] += 1

        origin.get(name).addCallbacks(answered, failed)

    def _register(self, phone: Phone) -> None:
        """Register (or refresh) through the phone's super-node, or a new one if it is gone."""
        if phone.registering:
            return
        if not self._is_up(phone.node_id):
            node = self.random.choice(self._live())
            phone.node_id = node.node_id
        else:
            node = next(n for n in self._live() if n.node_id == phone.node_id)
        value_name = f"reg:{phone.name}@{id_hex(node.node_id)}"
        expiry = self.settings.registration_expiry_seconds
        sent_at = self.sim.clock.seconds()
        phone.registering = True
        self.report.registrations += 1

        def stored(_: object) -> None:
            phone.registering = False
            phone.value_name = value_name
            phone.expires_at = sent_at + expiry
            self._later(expiry / 2, lambda: self._register(phone))

        def failed(failure: Failure) -> None:
            phone.registering = False
            self.report.registrations_failed += 1
            self.report.failure_reasons[f"register: {_reason(failure)}"] += 1
            # A phone retries soon, through another super-node if this one is gone.
            self._later(5.0, lambda: self._register(phone))

        node.put(value_name, phone.name.encode(), lifetime=expiry).addCallbacks(stored, failed)

    def _call(self) -> None:
        phone = self.random.choice(self.phones)
        if phone.value_name is None:
            return
        self.report.calls += 1
        serving = phone.node_id

        def answered(result: OperationResult) -> None:
            if not result.found:
                self.report.calls_failed["registration not found"] += 1
            elif not self._is_up(serving):
                self.report.calls_failed["callee's super-node down"] += 1

        origin = self.random.choice(self._live())

        def failed(failure: Failure) -> None:
            if self._gone(origin):
                # The caller's own super-node died mid-call-setup: the
                # phone retries elsewhere; not the callee's reachability.
                self.report.calls -= 1
                self.report.fetches_origin_failed += 1
                return
            self.report.calls_failed[f"lookup {_reason(failure)}"] += 1

        origin.get(phone.value_name).addCallbacks(answered, failed)

    def _count_peer_time(self) -> None:
        self.report.peer_seconds += len(self._live())
        if self.churning:
            self._later(1.0, self._count_peer_time)

    # -- the run -----------------------------------------------------------

    def churn(self) -> None:
        """Churn for the configured time while users keep using the ring."""
        settings = self.settings
        self.report.bytes_by_code.clear()
        self.churning = True
        for node in list(self.sim.nodes):
            self._schedule_failure(node)
        self._poisson(settings.lookups_per_second, self._lookup)
        self._poisson(settings.value_fetches_per_second, self._fetch_value)
        self._poisson(settings.calls_per_second, self._call)
        self._check_repairs()
        self._count_peer_time()
        if settings.bootstrap_fails_at is not None:
            self._later(settings.bootstrap_fails_at, self._lose_bootstrap)
        self.sim.run(settings.churn_seconds)
        self.churning = False
        self.report.unrepaired = len(self._repairing)

    def audit(self) -> None:
        """Let the ring settle, then fetch every value and live registration once."""
        # Restarts still under way finish; refreshes go on (phones keep registering).
        self.sim.run(self.settings.settle_seconds)
        now = self.sim.clock.seconds()
        for name, value in self.values.items():
            self.report.values_audited += 1
            if self._audit_fetch(name) != value:
                self.report.values_lost += 1
        for phone in self.phones:
            if phone.value_name is None or phone.expires_at <= now:
                continue
            self.report.registrations_audited += 1
            if self._audit_fetch(phone.value_name) is None:
                self.report.registrations_lost += 1
        self.report.live_at_end = len(self._live())

    def _audit_fetch(self, name: str) -> bytes | None:
        """The value under ``name`` fetched from a random peer (a second peer if the first fails)."""
        for _ in range(2):
            try:
                result: OperationResult = self.sim.wait(self.random.choice(self._live()).get(name))
            except Exception as e:
                self.report.failure_reasons[f"audit: {type(e).__name__}"] += 1
                continue
            return result.value if result.found else None
        return None

    def run(self) -> ChurnReport:
        try:
            self.build()
            self.churn()
            self.audit()
            self.sim.stop_all()
        finally:
            self._close_data_dirs()
        return self.report
