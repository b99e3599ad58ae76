"""
How full a UDP socket's receive queue is: the overload sign a flood gives first.

A UDP server offered more datagrams than it can read does not fall behind
in its event loop: each turn of the loop reads a batch, answers it and
runs its timers on time, so its loop lag stays low.  The excess waits in
the kernel's receive queue, seconds of it once the queue is megabytes
deep, and past the queue's size the kernel drops it unread.  Every phone
behind those datagrams retransmits, and nobody gets a 503.  The queue's
fill is therefore the SIP overload guard's third sign
(:mod:`p2psip.sip.overload`), next to the loop lag and the pending count.

Linux reports it per socket with ``getsockopt(SO_MEMINFO)``: the bytes
the queued datagrams take (``rmem_alloc``, kernel buffers included) and
the queue's limit (``rcvbuf``).  One system call, so
:class:`ReceiveBacklog` asks at most once per ``max_age_seconds`` (5 ms) of the
injected clock, however many datagrams ask it.  Elsewhere (or for a port
with no socket, as in tests) the fill is 0.0, and the guard falls back
on its other signs.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable

from twisted.internet.interfaces import IReactorTime

#: ``SO_MEMINFO`` from linux/asm-generic/socket.h (not in Python's socket module).
SO_MEMINFO = 55
#: ``SK_MEMINFO_VARS`` unsigned 32-bit counters; the first two are rmem_alloc and rcvbuf.
_MEMINFO = struct.Struct("9I")
#: How old a reading may be: the guard asks per datagram, the kernel once per this.
DEFAULT_MAX_AGE_SECONDS = 0.005


def receive_queue_fill(fileno: int) -> float | None:
    """The fraction of the socket's receive queue in use (0.0-1.0), or None where unknown."""
    try:
        with socket.socket(fileno=fileno) as sock:
            try:
                raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
            finally:
                sock.detach()  # the socket belongs to its port: do not close it
    except OSError:
        return None
    rmem_alloc, rcvbuf = _MEMINFO.unpack(raw)[:2]
    return min(1.0, rmem_alloc / rcvbuf) if rcvbuf else None


class ReceiveBacklog:
    """
    The fullest receive queue of a transport's UDP sockets, read at most
    once per ``max_age_seconds``.

    :param ports: gives the listening UDP ports now (they change on a reload).
    """

    def __init__(
        self,
        ports: Callable[[], Iterable[object]],
        clock: IReactorTime,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
    ) -> None:
        self._ports = ports
        self._clock = clock
        self._max_age_seconds = max_age_seconds
        self._read_at: float | None = None
        self._fill = 0.0

    def fill(self) -> float:
        """The largest fill of any UDP socket of ours (0.0 when none is known)."""
        now = self._clock.seconds()
        if self._read_at is not None and now - self._read_at < self._max_age_seconds:
            return self._fill
        self._read_at = now
        fills = [
            receive_queue_fill(fileno())
            for fileno in (getattr(port, "fileno", None) for port in self._ports())
            if fileno is not None
        ]
        self._fill = max((fill for fill in fills if fill is not None), default=0.0)
        return self._fill
