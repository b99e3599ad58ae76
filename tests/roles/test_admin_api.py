"""The overlay roles' admin API refuses bad input with 400s, not 500s."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.node import OverlayNode
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.testing import MemoryNetwork
from p2psip.web.site import ApiError


class AdminApiInputTests(SynchronousTestCase):
    def setUp(self) -> None:
        clock = Clock()
        # A node that has not joined any ring yet, as right after start-up.
        node = OverlayNode(
            identity=NodeIdentity.from_secret(77),
            clock=clock,
            connector=MemoryNetwork(clock).connector("192.0.2.1", 6084),
            advertised_host="192.0.2.1",
            advertised_port=6084,
        )
        self.routes = overlay_api_routes(node)

    def call_put(self, body: dict[str, object]) -> ApiError:
        with self.assertRaises(ApiError) as caught:
            self.routes["put"].call({}, body)
        return caught.exception

    def test_missing_name(self) -> None:
        """A put without a name is a 400 that says how to give one."""
        self.assertEqual(self.call_put({"value": "x"}).status, 400)

    def test_bad_lifetimes(self) -> None:
        """Non-numeric, zero and oversized lifetimes are 400s."""
        for lifetime in ("soon", 0, 2**40):
            error = self.call_put({"name": "n", "value": "v", "lifetime": lifetime})
            self.assertEqual(error.status, 400, lifetime)
            self.assertIn("lifetime", error.message)

    def test_value_must_be_text(self) -> None:
        """A non-string value is a 400."""
        self.assertEqual(self.call_put({"name": "n", "value": 5}).status, 400)

    def test_not_started(self) -> None:
        """Before the node is in a ring the API answers 503, not a crash."""
        self.assertEqual(self.call_put({"name": "n", "value": "v"}).status, 503)
