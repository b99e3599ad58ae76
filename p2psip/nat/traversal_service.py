"""
Keeping a ``TraversalClient`` registered at the mediator.

``TraversalService`` runs a ``ClientService`` whose "connection" is a
registration: :class:`_RegisteringEndpoint` starts the client and fires
only once the mediator welcomed it.  An unreachable mediator, a refused
``hello`` and a control connection closed before ``welcome`` are therefore
all failed connection attempts, retried after ``RETRY_SECONDS`` (the n-th
failure in a row waits the n-th delay, the last one from then on), and a
registered connection that closes is reconnected the same way.

Registration is not done in ``prepareConnection``: ``ClientService`` has
no transition for a connection that closes while that is pending or after
it failed, and a mediator that refuses a ``hello`` closes the connection.
Nor does ``when_registered`` use ``whenConnected``, whose Deferreds fire
inside ``ClientService``'s transition, where stopping the service (as a
waiter may) is refused as reentrant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.application.internet import ClientService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from p2psip.util.logs import Logger

if TYPE_CHECKING:
    from p2psip.nat.traversal import TraversalClient

#: Back-off between attempts to reach the mediator again.
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


class _Registration(Protocol):
    """What ``ClientService`` holds while the client is registered."""

    def __init__(self, service: TraversalService) -> None:
        self.service = service

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.service.registered = False
        self.service._last_reason = reason.getErrorMessage()


@implementer(IStreamClientEndpoint)
class _RegisteringEndpoint:
    """Connects the client's control connection; fires once the mediator welcomed it."""

    def __init__(self, service: TraversalService) -> None:
        self.service = service

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        client = self.service.client

        def registered(_: object) -> None:
            control = client.control
            assert control is not None and control.transport is not None
            held = protocolFactory.buildProtocol(control.transport.getPeer())
            assert held is not None
            held.makeConnection(control.transport)
            # The control connection tells ClientService when it closes.
            control.watchers.append(held)
            connected.callback(held)
            # Only now is ClientService done with its transition, so the
            # waiters may do anything, stopping the service included.
            self.service._now_registered()

        def unregistered(failure: Failure) -> None:
            self.service._last_reason = failure.getErrorMessage()
            if not connected.called:
                connected.errback(failure)

        starting = client.start()
        connected: defer.Deferred[IProtocol] = defer.Deferred(canceller=lambda _: starting.cancel())
        starting.addCallbacks(registered, unregistered)
        return connected


class TraversalService(MultiService):
    """
    Keeps a ``TraversalClient`` registered: reconnects with back-off.

    Roles that use the mediator (the peer's overlay links, the client role)
    run this service; connections made while the mediator is unreachable
    fail at once with a ``TraversalError`` saying so.

    :param clock: schedules the retries (the reactor, or a ``Clock`` in tests).
    """

    log = Logger()

    def __init__(
        self,
        client: TraversalClient,
        clock: IReactorTime,
        retry_seconds: tuple[float, ...] = RETRY_SECONDS,
    ) -> None:
        super().__init__()
        self.client = client
        self.retry_seconds = retry_seconds
        #: Whether the client is registered on the connection ClientService holds.
        self.registered = False
        self._last_reason = ""
        self._waiting: list[defer.Deferred[TraversalClient]] = []
        self.connection = ClientService(
            _RegisteringEndpoint(self),
            Factory.forProtocol(lambda: _Registration(self)),
            retryPolicy=self._retry_delay,
            clock=clock,
            prepareConnection=self._registered,
        )
        self.connection.setServiceParent(self)

    def when_registered(self) -> defer.Deferred[TraversalClient]:
        """Fires with the client once it is registered (at once if it is now)."""
        if self.registered:
            return defer.succeed(self.client)
        waiter: defer.Deferred[TraversalClient] = defer.Deferred()
        self._waiting.append(waiter)
        return waiter

    def _registered(self, registration: IProtocol) -> None:
        self.log.info("registered at the mediator as {id}", id=self.client.client_id)

    def _now_registered(self) -> None:
        self.registered = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(self.client)

    def _retry_delay(self, failed_attempts: int) -> float:
        delay = self.retry_seconds[min(failed_attempts, len(self.retry_seconds)) - 1]
        self.log.warn(
            "not registered at the mediator ({reason}); retrying in {delay}s",
            reason=self._last_reason,
            delay=delay,
        )
        return delay
