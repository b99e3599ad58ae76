"""
How many connections one source address, and everyone together, may hold
open on a listener.

A public listener (SIP over TCP or TLS, the overlay port, the HTTP site)
keeps state for every open connection, so one host opening thousands of
them would use up file descriptors and memory for everyone.
:class:`ConnectionLimitFactory` wraps the listener's own factory (the
wrapping pattern of ``twisted.protocols.policies``): a connection from an
address that already holds ``per_source`` connections, or one past
``total``, is closed at once, before the wrapped factory sees it, and the
refusals are logged at warn through :class:`~p2psip.util.log_throttle.LogThrottle`
(at most one line a minute per source, with the count).  Every other
connection is counted until it closes.

The per-source key is the remote IP address (not the port); a NAT with
many clients behind it is one source, which is why each listener's limit
is an option.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger


def _source(addr: IAddress | None) -> str:
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else "?"


def _blurred(host: str) -> str:
    """An address fit for the log of a public role: IPv4 /24 or IPv6 /48."""
    if ":" in host:
        return ":".join(host.split(":")[:3]) + "::/48"
    parts = host.split(".")
    return ".".join(parts[:3]) + ".x" if len(parts) == 4 else "?"


class _Refused(Protocol):
    """Stands in for the wrapped protocol of a refused connection: closes it at once."""

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()


class _Counted(ProtocolWrapper):
    """The wrapped protocol, counted against its source until the connection closes."""

    def __init__(self, factory: ConnectionLimitFactory, wrapped: Any, source: str) -> None:
        super().__init__(factory, wrapped)
        self.limits = factory
        self.source = source

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.limits.released(self.source)
        super().connectionLost(reason)


class ConnectionLimitFactory(WrappingFactory[_Counted]):
    """
    ``wrapped``'s connections, at most ``per_source`` per remote address and
    ``total`` at once.

    :param what: names the listener in the warning (``SIP``, ``overlay``).
    :param hint: what the operator may change, for the warning (an option).
    """

    log = Logger()

    def __init__(
        self,
        wrapped: IProtocolFactory,
        clock: IReactorTime,
        per_source: int,
        total: int,
        *,
        what: str,
        hint: str,
    ) -> None:
        if per_source < 1 or total < 1:
            raise ValueError("connection limits must allow at least one connection")
        super().__init__(wrapped)
        self.per_source = per_source
        self.total = total
        self.what = what
        self.hint = hint
        self.open_by_source: dict[str, int] = {}
        self.open_total = 0
        #: Connections refused since start.
        self.refused = 0
        self._log = LogThrottle(clock)

    def buildProtocol(self, addr: IAddress) -> Protocol | None:  # type: ignore[override]
        source = _source(addr)
        held = self.open_by_source.get(source, 0)
        if held >= self.per_source or self.open_total >= self.total:
            self._refuse(source, held)
            return _Refused()
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.open_by_source[source] = held + 1
        self.open_total += 1
        return _Counted(self, wrapped, source)

    def released(self, source: str) -> None:
        """A counted connection closed."""
        self.open_total -= 1
        held = self.open_by_source.get(source, 0) - 1
        if held > 0:
            self.open_by_source[source] = held
        else:
            self.open_by_source.pop(source, None)

    def _refuse(self, source: str, held: int) -> None:
        self.refused += 1
        blurred = _blurred(source)
        held_back = self._log.admit(blurred)
        if held_back is None:
            return
        if held >= self.per_source:
            why = f"{held} open from there already (at most {self.per_source} per address)"
        else:
            why = f"{self.open_total} open already (at most {self.total})"
        self.log.warn(
            "refused {count} {what} connection(s) from {source}: {why}; raise {hint} if "
            "that address is legitimate",
            count=held_back + 1,
            what=self.what,
            source=blurred,
            why=why,
            hint=self.hint,
        )
