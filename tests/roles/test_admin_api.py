"""The overlay roles' admin API refuses bad input with 400s, not 500s."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.node import OverlayNode
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.testing import MemoryNetwork
from p2psip.web.site import ApiError, build_site
from tests.web.test_site import TOKEN, Connection, http_request


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
        for lifetime in (
            "soon",
            0,
            2**40,
            1.5,
            True,
            float("inf"),
            "\u0661",
            "-5",
            "1e3",
            "9" * 5000,
        ):
            error = self.call_put({"name": "n", "value": "v", "lifetime": lifetime})
            self.assertEqual(error.status, 400, lifetime)
            self.assertIn("lifetime", error.message)

    def test_value_must_be_text(self) -> None:
        """A non-string value is a 400."""
        self.assertEqual(self.call_put({"name": "n", "value": 5}).status, 400)

    def test_query_lifetime(self) -> None:
        """A lifetime in the query string is ASCII digits; anything else is a 400."""
        for lifetime in ("", " 5", "0x10", "\uff15"):
            with self.assertRaises(ApiError) as caught:
                self.routes["put"].call({"name": "n", "value": "v", "lifetime": lifetime}, None)
            self.assertEqual(caught.exception.status, 400, lifetime)

    def test_not_started(self) -> None:
        """Before the node is in a ring the API answers 503, not a crash."""
        self.assertEqual(self.call_put({"name": "n", "value": "v"}).status, 503)


#: Text with unpaired surrogates too, which json.dumps escapes as \udXXX.
TEXT = st.text() | st.text(st.characters(categories=["Cs", "Ll", "Nd"]), max_size=5)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


class AdminApiOverHttpTests(SynchronousTestCase):
    """The routes behind the real site: hostile JSON and query strings are 4xx, never 500."""

    def setUp(self) -> None:
        clock = Clock()
        node = OverlayNode(
            identity=NodeIdentity.from_secret(78),
            clock=clock,
            connector=MemoryNetwork(clock).connector("192.0.2.1", 6084),
            advertised_host="192.0.2.1",
            advertised_port=6084,
        )
        self.site = build_site(
            status=dict,
            metrics=CollectorRegistry(),
            api=overlay_api_routes(node),
            admin_token=TOKEN,
            title="t",
            reactor=clock,
        )

    def answer(self, raw: bytes) -> int:
        connection = Connection(self.site)
        connection.send(raw)
        response = connection.response()
        self.assertIn("error", response.json())
        return response.code

    @settings(max_examples=150, deadline=None)
    @given(fields=st.dictionaries(st.sampled_from(["name", "value", "lifetime"]), JSON_VALUES))
    def test_put_bodies(self, fields: dict[str, Any]) -> None:
        """Any JSON object (NaN, infinities and surrogates included) gets a 4xx or the 503 of a node not in a ring."""
        body = json.dumps(fields).encode("utf-8")
        code = self.answer(http_request("POST", "/api/put", body, "application/json"))
        self.assertIn(code, {400, 503})
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=150, deadline=None)
    @given(
        route=st.sampled_from(["put", "get", "lookup", "ring"]),
        query=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    )
    def test_query_strings(self, route: str, query: str) -> None:
        """Any printable query string on any route gets a 4xx or 503, never a 500."""
        method = "POST" if route == "put" else "GET"
        code = self.answer(http_request(method, f"/api/{route}?{query}"))
        self.assertIn(code, {400, 404, 503})
        self.assertEqual(self.flushLoggedErrors(), [])


class RegistrationGetTests(SynchronousTestCase):
    """``get`` of a SIP AOR answers the registration, which is stored under the AOR without its scheme."""

    AOR = "sip:alice@example.com"

    def setUp(self) -> None:
        from p2psip.enrolment.authority import OverlayAuthority
        from p2psip.sip.location import Binding, OverlayLocationService
        from p2psip.testing import TEST_CERTIFICATE_EPOCH, user_certificate
        from tests.overlay.ringsim import RingSimulation

        authority = OverlayAuthority.create("registrations.test", TEST_CERTIFICATE_EPOCH)
        self.sim = RingSimulation(seed=31, authority=authority)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(2):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 120)
        server, self.reader = self.sim.live()[:2]
        server.add_user_certificate(
            user_certificate(authority, server.identity, "alice@example.com")
        )
        self.server_id = server.node_id
        binding = Binding(
            self.AOR,
            "sip:alice@192.0.2.10:5060",
            self.sim.clock.seconds() + 600,
            0.5,
            server.node_id,
        )
        self.sim.wait(OverlayLocationService(server, self.sim.clock).register(self.AOR, [binding]))
        self.routes = overlay_api_routes(self.reader)

    def get(self, args: dict[str, str]) -> dict[str, Any]:
        answer: dict[str, Any] = self.sim.wait(self.routes["get"].call(args, None))
        return answer

    def test_aor_fetches_the_registration(self) -> None:
        """sip:alice@... finds alice's binding, the super-node serving it and where it is stored."""
        from p2psip.util.ids import id_hex

        answer = self.get({"name": "SIP:alice@Example.COM"})
        self.assertEqual(
            (answer["kind"], answer["aor"], answer["resource"], answer["found"]),
            ("sip-registration", self.AOR, "alice@example.com", True),
        )
        [binding] = answer["bindings"]
        self.assertEqual(binding["contact"], "sip:alice@192.0.2.10:5060")
        self.assertEqual((binding["q"], binding["served_by"]), (0.5, id_hex(self.server_id)))
        self.assertTrue(0 < binding["expires"] <= 601, binding)  # whole seconds, rounded up
        self.assertTrue(answer["route"] and answer["stored_at"])

    def test_kind_data_fetches_the_uri_itself(self) -> None:
        """kind=data asks for a DATA value under the URI, where nothing is stored."""
        answer = self.get({"name": self.AOR, "kind": "data"})
        self.assertFalse(answer["found"])
        self.assertNotIn("bindings", answer)

    def test_unregistered_and_bad_aors(self) -> None:
        """Nobody registered is found=False; a URI that is no AOR, or an unknown kind, is a 400."""
        answer = self.get({"name": "sip:bob@example.com"})
        self.assertEqual((answer["found"], answer["bindings"]), (False, []))
        for args in ({"name": "sip:example.com"}, {"name": "bob", "kind": "sip"}):
            with self.assertRaises(ApiError) as caught:
                self.routes["get"].call(args, None)
            self.assertEqual(caught.exception.status, 400, args)
