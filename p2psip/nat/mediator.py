"""
The STUNT mediator's Twisted side: control server, relay, status pages.

The broker logic lives in ``p2psip.nat.broker`` (sans-IO); this module adapts
it to TCP connections.  /status and /metrics come from ``p2psip.web.site``.  A control connection that answers the challenge
with ``relay-join`` instead of ``hello`` becomes one half of a relayed
stream: once both halves of a session the broker set up for relaying have
joined, the mediator sends ``relay-ready`` on each and from then on copies
bytes between them, within the operator's byte and rate limits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
from prometheus_client.core import CounterMetricFamily, Metric
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from p2psip.nat.broker import Broker
from p2psip.nat.control_protocol import (
    PROTOCOL_VERSION,
    FrameDecoder,
    StuntDecodeError,
    encode_frame,
)
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger
from p2psip.util.token_bucket import TokenBuckets

AUTH_TIMEOUT_SECONDS = 10.0
MAX_RELAY_PREFIX_BYTES = 65536
#: Control messages one source address may send per second, and at once.
#: A registered client pings every 25 s and a brokered connection takes a
#: handful of messages, so this is far above any real client's use.
CONTROL_MESSAGES_PER_SECOND = 20.0
CONTROL_MESSAGE_BURST = 100


@attrs.frozen
class RelayLimits:
    """Per-session relay limits (``relay-*`` keys in mediator.ini)."""

    max_bytes_per_session: int = 100 * 1024 * 1024
    rate_bytes_per_second: int = 1024 * 1024
    idle_timeout_seconds: float = 300.0


class ControlServerProtocol(Protocol):
    """One control connection; a ``p2psip.nat.broker.Link`` for the broker."""

    log = Logger()

    def __init__(self, factory: ControlServerFactory) -> None:
        self.factory = factory
        self.decoder = FrameDecoder()
        self.auth_timer: Any = None
        self.relay: _RelaySplice | None = None
        self.relay_waiting = False
        self.closing = False
        self.host = ""

    # p2psip.nat.broker.Link
    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(encode_frame(message))

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.loseConnection()

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        host = self.host = getattr(peer, "host", "")
        if not self.factory.admit(host):
            self.factory.broker.metrics.rejected_connection()
            self.log.debug("refused control connection from {host}: rate limit", host=host)
            self.closing = True
            transport: Any = self.transport
            transport.abortConnection()
            return
        # Control messages are small and latency-bound: no Nagle.
        if hasattr(self.transport, "setTcpNoDelay"):
            self.transport.setTcpNoDelay(True)
        self.factory.broker.link_opened(self, (host, getattr(peer, "port", 0)))
        self.auth_timer = self.factory.clock.callLater(AUTH_TIMEOUT_SECONDS, self._auth_timeout)

    def _auth_timeout(self) -> None:
        self.auth_timer = None
        self.log.debug("control connection did not authenticate in time")
        self.close()

    def _authenticated(self) -> None:
        if self.auth_timer is not None and self.auth_timer.active():
            self.auth_timer.cancel()
        self.auth_timer = None

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        if self.relay is not None:
            self.relay.forward(self, data)
            return
        if self.relay_waiting:
            # Nothing may be sent before relay-ready; a client that does is
            # broken or hostile.
            self.log.debug("relay client sent data before relay-ready")
            self.close()
            return
        try:
            messages = self.decoder.feed(data, stop_after=lambda m: m["type"] == "relay-join")
        except StuntDecodeError as e:
            self.log.debug("malformed control frame: {why}", why=str(e))
            self.close()
            return
        for message in messages:
            if self.closing:
                return
            if not self.factory.message_admitted(self.host):
                self.send(
                    {
                        "type": "error",
                        "code": "busy",
                        "reason": "too many control messages from your address "
                        "(mediator.ini control-messages-per-second)",
                    }
                )
                self.close()
                return
            if message["type"] == "relay-join" and self.factory.broker.client_id_of(self) is None:
                self._authenticated()
                rest = self.decoder.take_remainder()
                if rest:
                    self.close()
                    return
                self.factory.relay_join(self, message)
                return
            self.factory.broker.message_received(self, message)
            if self.factory.broker.client_id_of(self) is not None:
                self._authenticated()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        if self.auth_timer is not None and self.auth_timer.active():
            self.auth_timer.cancel()
        self.auth_timer = None
        self.factory.broker.link_closed(self)
        self.factory.relay_lost(self)


class _RelaySplice:
    """Two spliced relay connections and their limits."""

    log = Logger()

    def __init__(
        self,
        factory: ControlServerFactory,
        session_id: str,
        parties: tuple[str, str],
        a: ControlServerProtocol,
        b: ControlServerProtocol,
    ) -> None:
        self.factory = factory
        self.session_id = session_id
        self.parties = parties
        self.ends = (a, b)
        self.total_bytes = 0
        self.credit = {
            id(a): float(factory.relay_limits.rate_bytes_per_second),
            id(b): float(factory.relay_limits.rate_bytes_per_second),
        }
        self.last_refill = factory.clock.seconds()
        self.resume_calls: dict[int, Any] = {}
        self.idle_call: Any = factory.clock.callLater(
            factory.relay_limits.idle_timeout_seconds, self._idle
        )
        self.ended = False

    def _other(self, end: ControlServerProtocol) -> ControlServerProtocol:
        return self.ends[1] if end is self.ends[0] else self.ends[0]

    def _idle(self) -> None:
        self.idle_call = None
        self.log.info("relay {session} idle; closing", session=self.session_id)
        self.end()

    def forward(self, source: ControlServerProtocol, data: bytes) -> None:
        limits = self.factory.relay_limits
        self.total_bytes += len(data)
        self.factory.broker.metrics.relayed(len(data))
        if self.total_bytes > limits.max_bytes_per_session:
            self.log.info(
                "relay {session} hit relay-bytes-per-session ({limit}); closing",
                session=self.session_id,
                limit=limits.max_bytes_per_session,
            )
            self.end()
            return
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.reset(limits.idle_timeout_seconds)
        target = self._other(source)
        if target.transport is not None:
            target.transport.write(data)
        # Token bucket per direction: when a side has sent more than its
        # rate allows, stop reading from it until the bucket refills.
        now = self.factory.clock.seconds()
        rate = float(limits.rate_bytes_per_second)
        elapsed, self.last_refill = now - self.last_refill, now
        for key in self.credit:
            self.credit[key] = min(rate, self.credit[key] + elapsed * rate)
        self.credit[id(source)] -= len(data)
        transport: Any = source.transport
        if (
            self.credit[id(source)] < 0
            and id(source) not in self.resume_calls
            and transport is not None
        ):
            transport.pauseProducing()
            delay = -self.credit[id(source)] / rate
            self.resume_calls[id(source)] = self.factory.clock.callLater(
                delay, self._resume, source
            )

    def _resume(self, source: ControlServerProtocol) -> None:
        self.resume_calls.pop(id(source), None)
        transport: Any = source.transport
        if not self.ended and transport is not None:
            transport.resumeProducing()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        for call in list(self.resume_calls.values()) + [self.idle_call]:
            if call is not None and call.active():
                call.cancel()
        self.resume_calls.clear()
        self.idle_call = None
        for end in self.ends:
            end.close()
        self.factory.broker.relay_ended(*self.parties)


class ConnectionRateLimit:
    """
    Per-source-address admission: at most ``limit`` connections per window.

    Fixed windows keep this one dict lookup per connection; the table is
    cleared every window so an address flood cannot grow memory unbounded
    beyond one window's worth of addresses (capped by ``max_addresses``).
    """

    def __init__(
        self,
        clock: IReactorTime,
        limit: int,
        window_seconds: float = 60.0,
        max_addresses: int = 100_000,
    ) -> None:
        self.clock = clock
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._window_start = clock.seconds()
        self._counts: dict[str, int] = {}

    def admit(self, address: str) -> bool:
        now = self.clock.seconds()
        if now - self._window_start >= self.window_seconds:
            self._window_start = now
            self._counts.clear()
        count = self._counts.get(address, 0)
        if count >= self.limit:
            return False
        if count == 0 and len(self._counts) >= self.max_addresses:
            return False
        self._counts[address] = count + 1
        return True


class ControlServerFactory(Factory):
    """Control connections for one broker; also joins relay halves."""

    log = Logger()

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        relay_limits: RelayLimits | None = None,
        connections_per_minute_per_address: int = 60,
        messages_per_second: float = CONTROL_MESSAGES_PER_SECOND,
        message_burst: int = CONTROL_MESSAGE_BURST,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.relay_limits = relay_limits or RelayLimits()
        self.rate_limit = ConnectionRateLimit(clock, connections_per_minute_per_address)
        self.messages_per_second = messages_per_second
        self._messages = TokenBuckets(messages_per_second, message_burst)
        self._messages_log = LogThrottle(clock)
        #: Control connections closed for sending too many messages.
        self.message_floods = 0
        self._waiting: dict[str, ControlServerProtocol] = {}
        self.splices: set[_RelaySplice] = set()

    def buildProtocol(self, addr: Any) -> ControlServerProtocol:
        return ControlServerProtocol(self)

    def admit(self, host: str) -> bool:
        return self.rate_limit.admit(host)

    def message_admitted(self, host: str) -> bool:
        """
        Whether a control message from ``host`` may be handled: a token
        bucket per source address, so that one address cannot keep the
        broker busy.  Over it the connection is closed, with a warning at
        most once a minute per address.
        """
        if self._messages.take(host, self.clock.seconds()):
            return True
        self.message_floods += 1
        held_back = self._messages_log.admit(host)
        if held_back is not None:
            self.log.warn(
                "closed {count} control connection(s) from {host}: more than {rate:g} "
                "messages a second (control-messages-per-second)",
                count=held_back + 1,
                host=host,
                rate=self.messages_per_second,
            )
        return False

    def relay_join(self, end: ControlServerProtocol, message: dict[str, Any]) -> None:
        session_id = message["session"]
        if message["version"] != PROTOCOL_VERSION or not self.broker.relay_token_valid(
            session_id, message["token"]
        ):
            self.log.debug("relay-join with an unknown session or token")
            end.send(
                {
                    "type": "error",
                    "code": "relay-refused",
                    "reason": "unknown relay session or token",
                }
            )
            end.close()
            return
        first = self._waiting.pop(session_id, None)
        if first is None or first.closing:
            end.relay_waiting = True
            self._waiting[session_id] = end
            return
        end.relay_waiting = False
        first.relay_waiting = False
        splice = _RelaySplice(self, session_id, self.broker.relay_parties(session_id), first, end)
        self.splices.add(splice)
        first.relay = splice
        end.relay = splice
        for side in (first, end):
            # Relayed traffic is often small interactive writes; Nagle plus
            # the peer's delayed ACK would add ~40 ms to each.
            if side.transport is not None and hasattr(side.transport, "setTcpNoDelay"):
                side.transport.setTcpNoDelay(True)
            side.send({"type": "relay-ready", "session": session_id})
        self.broker.relay_established(session_id)

    def relay_lost(self, end: ControlServerProtocol) -> None:
        for session_id, waiting in list(self._waiting.items()):
            if waiting is end:
                del self._waiting[session_id]
        if end.relay is not None:
            splice = end.relay
            end.relay = None
            splice.end()
            self.splices.discard(splice)


# --- status ---------------------------------------------------------------------


#: The STUN responder's counters, with the help text of each on /metrics.
STUN_COUNTERS: Mapping[str, str] = {
    "requests": "Well-formed STUN requests received since the mediator started.",
    "responses": "STUN success responses sent since the mediator started.",
    "errors": "STUN error responses sent since the mediator started.",
    "dropped": "STUN input that got no answer since the mediator started.",
    "rate_limited": "STUN datagrams dropped because their source was over its rate.",
}


class StunCollector:
    """
    The STUN server's counters on /metrics, as ``p2psip_mediator_stun_NAME_total``.

    The STUN responder keeps plain integer attributes (cheap on its
    per-packet path); ``counters`` returns them, and they are read when
    Prometheus scrapes.
    """

    def __init__(self, counters: Callable[[], Mapping[str, int]]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        counters = self._counters()
        for name, help_text in STUN_COUNTERS.items():
            family = CounterMetricFamily(f"p2psip_mediator_stun_{name}_total", help_text)
            if name in counters:
                family.add_metric([], float(counters[name]))
            yield family
