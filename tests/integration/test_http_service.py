"""
The HTTP service against the real reactor: a busy port fails startup, and
the error says which option to change.

A memory reactor cannot refuse a port, so this one binds a real socket on
loopback (port 0) to make the port busy.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from prometheus_client import CollectorRegistry
from p2psip.web.site import build_site, http_service


class HttpServiceLoopbackTests(SynchronousTestCase):
    def test_busy_port_names_the_option(self) -> None:
        """A port that cannot be bound fails startup with an error naming --http."""
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        site = build_site(
            status=dict,
            metrics=CollectorRegistry(),
            api={},
            admin_token=None,
            title="t",
            reactor=Clock(),
        )
        service = http_service(f"tcp:{port}:interface=127.0.0.1", site, reactor)
        error = self.assertRaises(CannotListenError, service.privilegedStartService)
        self.assertIn("the --http option", str(error))
        self.assertIn(f"tcp:{port}:interface=127.0.0.1", str(error))
