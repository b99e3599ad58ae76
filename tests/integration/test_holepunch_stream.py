"""The punched-connection check on a real connected socket pair (the reactor is a memory one)."""

from __future__ import annotations

import socket

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import holepunch

TOKEN = holepunch.verify_token("session")


class VerifyStreamTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.left, self.right = socket.socketpair()
        self.addCleanup(self.left.close)
        self.addCleanup(self.right.close)

    def readable(self) -> None:
        for reader in list(self.reactor.readers):
            reader.doRead()

    def test_token_exchange(self) -> None:
        """A connection over which both sides' tokens arrive passes the check."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN)
        self.right.sendall(TOKEN)
        self.readable()
        self.assertIs(self.successResultOf(d), self.left)
        self.assertEqual(self.right.recv(100), TOKEN)
        self.assertEqual((self.reactor.readers, self.reactor.getDelayedCalls()), (set(), []))

    def test_wrong_token(self) -> None:
        """A far end that is not this session's peer fails the check."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN)
        self.right.sendall(holepunch.verify_token("other"))
        self.readable()
        self.assertIn("not the peer", str(self.failureResultOf(d, holepunch.PunchFailed).value))

    def test_no_data(self) -> None:
        """A connection where no bytes come back fails after the timeout, naming the cause."""
        d = holepunch.verify_stream(self.reactor, self.left, TOKEN, timeout_seconds=1.5)
        self.reactor.advance(1.5)
        self.assertIn(
            "only the handshake", str(self.failureResultOf(d, holepunch.PunchFailed).value)
        )
        self.assertEqual(self.reactor.readers, set())
