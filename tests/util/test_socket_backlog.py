"""The UDP receive-queue fill the overload guard reads, on real loopback sockets."""

from __future__ import annotations

import socket
import sys

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.socket_backlog import ReceiveBacklog, receive_queue_fill


class Port:
    """What ReceiveBacklog reads of a listening port: its socket's descriptor."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


class ReceiveQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not sys.platform.startswith("linux"):
            raise self.skipTest("SO_MEMINFO is Linux's")
        self.server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.server.close)
        self.server.bind(("127.0.0.1", 0))
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sender.close)

    def send(self, count: int) -> None:
        for _ in range(count):
            self.sender.sendto(b"x" * 400, self.server.getsockname())

    def test_fill_follows_what_waits_unread(self) -> None:
        """Empty: 0; datagrams waiting: more; read again: back to 0; the socket stays open."""
        self.assertEqual(receive_queue_fill(self.server.fileno()), 0.0)
        self.send(20)
        some = receive_queue_fill(self.server.fileno())
        assert some is not None
        self.send(20)
        more = receive_queue_fill(self.server.fileno())
        assert more is not None
        self.assertTrue(0 < some < more <= 1.0, (some, more))
        self.server.setblocking(False)
        for _ in range(40):
            self.server.recv(2048)
        self.assertEqual(receive_queue_fill(self.server.fileno()), 0.0)

    def test_not_a_socket_is_unknown(self) -> None:
        """A descriptor that is no socket reads as unknown, not an error."""
        with open(__file__, "rb") as f:
            self.assertIsNone(receive_queue_fill(f.fileno()))

    def test_backlog_reads_at_most_once_per_age(self) -> None:
        """The guard asks per datagram; the kernel is asked once per max age; ports without sockets count 0."""
        clock = Clock()
        backlog = ReceiveBacklog(lambda: [Port(self.server), object()], clock, max_age_seconds=0.05)
        self.assertEqual(backlog.fill(), 0.0)
        self.send(30)
        self.assertEqual(backlog.fill(), 0.0)  # the reading is still fresh
        clock.advance(0.05)
        self.assertGreater(backlog.fill(), 0.0)
