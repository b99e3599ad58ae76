"""
Types for reactor parameters that need more than one Twisted interface.

Twisted describes a reactor by many zope interfaces (IReactorTime,
IReactorUDP, IReactorTCP, ...).  A parameter that needs one of them is
annotated with that interface; a parameter that needs two cannot be, since
an annotation cannot name "provides both".  The Protocols here list the
methods such callers use instead.  The real reactor and
``p2psip.testing.MemoryUDPReactor`` match them.

Code holding a reactor typed by one interface (``IReactorTime``, say, as
``task.react`` hands it over) gets the wider view with :func:`as_udp_reactor`,
which checks the methods are there rather than casting.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol, cast, runtime_checkable

from socket import AddressFamily

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IProtocolFactory,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import DatagramProtocol


class UDPPort(Protocol):
    """
    A listening UDP socket, as callers use it: IUDPTransport's ``write``
    and ``getHost``, IListeningPort's ``stopListening``.
    """

    def write(self, packet: bytes, addr: tuple[str, int]) -> None: ...

    def getHost(self) -> IPv4Address | IPv6Address: ...

    def stopListening(self) -> Deferred[None] | None: ...


class Timers(Protocol):
    """The clock half of IReactorTime, for code that is handed either a reactor or a clock."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall: ...


@runtime_checkable
class UDPReactor(Protocol):
    """
    A reactor with UDP sockets and timers: the methods of IReactorUDP and IReactorTime.

    Code that also opens stream connections or listeners does so through
    Twisted's endpoints, which need IReactorTCP (and IReactorSSL for
    ``ssl:``) as well and check for it themselves.
    """

    def listenUDP(
        self, port: int, protocol: DatagramProtocol, interface: str = ..., maxPacketSize: int = ...
    ) -> UDPPort: ...

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def getDelayedCalls(self) -> Sequence[IDelayedCall]: ...


@runtime_checkable
class HolePunchReactor(UDPReactor, Protocol):
    """
    What raw-socket hole punching (``p2psip.nat.holepunch``) needs besides
    UDP and timers: watching its own sockets (IReactorFDSet) and handing a
    connected one to a protocol (IReactorSocket's ``adoptStreamConnection``).
    """

    def addReader(self, reader: IReadDescriptor, /) -> None: ...

    def addWriter(self, writer: IWriteDescriptor, /) -> None: ...

    def removeReader(self, reader: IReadDescriptor, /) -> None: ...

    def removeWriter(self, writer: IWriteDescriptor, /) -> None: ...

    def adoptStreamConnection(
        self, fileDescriptor: int, addressFamily: AddressFamily, factory: IProtocolFactory, /
    ) -> object: ...


def as_hole_punch_reactor(reactor: object) -> HolePunchReactor:
    """
    ``reactor`` seen as a :class:`HolePunchReactor`.

    :raises TypeError: when it lacks one of the methods.
    """
    if not isinstance(reactor, HolePunchReactor):
        raise TypeError(
            f"{reactor!r} cannot punch holes (needs IReactorUDP, IReactorTime, "
            "IReactorFDSet and IReactorSocket)"
        )
    return reactor


def as_udp_reactor(reactor: object) -> UDPReactor:
    """
    ``reactor`` seen as a :class:`UDPReactor`.

    :raises TypeError: when it lacks UDP sockets or timers (only the
        methods' presence is checked, as ``isinstance`` does for Protocols).
    """
    if not isinstance(reactor, UDPReactor):
        raise TypeError(f"{reactor!r} has no UDP sockets and timers (IReactorUDP, IReactorTime)")
    return reactor


class IRoleReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorUDP):
    """
    Everything a role's parts ask of the reactor: timers, TCP (for
    endpoints), UDP (SIP and STUN sockets) and the core (for ``strports``).

    No reactor declares this interface; :func:`as_role_reactor` checks
    that one provides each part and then lets it be used as the whole.
    """


_ROLE_REACTOR_PARTS = (IReactorCore, IReactorTime, IReactorTCP, IReactorUDP)


def as_role_reactor(reactor: object) -> IRoleReactor:
    """
    ``reactor`` seen as an :class:`IRoleReactor`, after checking that it
    provides every interface that one combines.

    :raises TypeError: naming the interfaces it lacks.
    """
    missing = [part.__name__ for part in _ROLE_REACTOR_PARTS if not part.providedBy(reactor)]
    if missing:
        raise TypeError(f"{reactor!r} does not provide {', '.join(missing)}")
    return cast(IRoleReactor, reactor)


#: The exit status of a role that stopped because it cannot work
#: (sysexits' EX_UNAVAILABLE): ``twistd`` and ``twist`` exit 0 whenever the
#: reactor stops, so a failed start would look like a clean stop to a
#: service manager (``Restart=on-failure`` would not retry it, and
#: ``systemctl status`` would not show it failed).
CANNOT_WORK_STATUS = 69


class _Launcher:
    """Whether this process is a role's own (set by the launcher plugins)."""

    #: Only a process that ``twistd`` or ``twist`` runs for a role ends with
    #: a status of its own when the role gives up; a test that builds a role
    #: on the process's reactor must not end the whole test run.
    owns_process = False


def role_owns_process(owns: bool = True) -> None:
    """Called by the launcher plugins: a role that gives up ends this process with a failure status."""
    _Launcher.owns_process = owns


def stopper(
    reactor: IRoleReactor,
    status: int = CANNOT_WORK_STATUS,
    at_exit: Callable[[Callable[[], None]], object] = atexit.register,
) -> Callable[[], None]:
    """
    Stops ``reactor`` now if it runs, or as soon as it starts: a service
    that finds at start-up that the role cannot work (a port taken) ends
    the process either way, rather than leaving it up and useless.  In a
    role's own process the exit status is then ``status``, set after the
    launcher has shut the role down and removed its pid file (``at_exit``
    is how tests see it).
    """
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and _Launcher.owns_process:
            stopping.append(True)
            at_exit(partial(exit_with, status))
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    return stop


def exit_with(status: int) -> None:
    """
    End the interpreter with ``status`` once the launcher has returned.

    Registered with :mod:`atexit` when the role gives up, so it runs first
    of the exit handlers (they run last-registered first), after the
    launcher's own clean-up; the standard streams, where ``twist`` writes
    the log, are flushed before the process ends.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
