"""
The JSON the ring page draws from: the ring view (members, arcs, this
node's links by path), a member's tables, the shared ring walk, and the
routes that serve them only to holders of the admin token.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.errors import RequestTimeout
from p2psip.overlay.node import OverlayNode
from p2psip.overlay.peer_tables import PeerTables
from p2psip.roles.overlay_api import overlay_api_routes
from p2psip.util.ids import RING_SIZE, clockwise, id_hex
from p2psip.web import ring_view as ring_view_module
from p2psip.web.ring_view import RingWalks, ring_view, tables_json, walk_ring
from p2psip.web.site import build_site
from tests.overlay.ringsim import SIMULATION_CONFIG, RingSimulation
from tests.web.test_site import TOKEN, Connection, http_request

SMALL_TABLES = evolve(SIMULATION_CONFIG, successors=2, predecessors=2)


class RingViewTests(SynchronousTestCase):
    """A real ring of six on a fake clock, seen from its first member."""

    def setUp(self) -> None:
        self.sim = RingSimulation(SMALL_TABLES, seed=17)
        self.addCleanup(self.sim.stop_all)
        self.sim.grow(6)
        self.sim.run_until(self.sim.consistent, 120)
        self.node = self.sim.nodes[0]

    def view(self) -> dict[str, Any]:
        walked = self.sim.wait(walk_ring(self.node))
        return ring_view(self.node, walked)

    def test_members_in_id_order_with_their_arcs(self) -> None:
        """Each member's arc runs from its predecessor; the arcs cover the ring once."""
        view = self.view()
        ids = sorted(node.node_id for node in self.sim.nodes)
        self.assertTrue(view["complete"])
        self.assertEqual(view["count"], 6)
        self.assertEqual([m["node_id"] for m in view["members"]], [id_hex(i) for i in ids])
        for index, member in enumerate(view["members"]):
            self.assertEqual(member["arc_from"], id_hex(ids[index - 1]))
            expected = clockwise(ids[index - 1], ids[index]) / RING_SIZE
            self.assertAlmostEqual(member["share"], expected)
        self.assertAlmostEqual(sum(m["share"] for m in view["members"]), 1.0)
        [this] = [m for m in view["members"] if m["this"]]
        self.assertEqual(this["node_id"], id_hex(self.node.node_id))
        self.assertEqual(view["node_id"], this["node_id"])
        addresses = {m["node_id"]: m["address"] for m in view["members"]}
        for node in self.sim.nodes:
            self.assertEqual(addresses[id_hex(node.node_id)], f"{node.advertised_host}:6084")

    def test_links_by_path(self) -> None:
        """Every identified link is listed with how it was made; members show their paths."""
        link = self.node.links_to(self.node.topology.successors[0])[0]
        link.path = "relayed"
        view = self.view()
        peers = {entry["peer"]: entry for entry in view["links"]}
        successor = id_hex(self.node.topology.successors[0])
        self.assertEqual(peers[successor]["path"], "relayed")
        self.assertTrue(peers[successor]["member"])
        for entry in view["links"]:
            self.assertIn(entry["direction"], ("in", "out"))
        member = {m["node_id"]: m for m in view["members"]}
        self.assertIn("relayed", member[successor]["paths"])
        self.assertEqual(member[id_hex(self.node.node_id)]["paths"], [])
        self.assertEqual(view["successors"][0], successor)

    def test_an_incomplete_walk_still_has_arcs(self) -> None:
        """Arcs run between the members found; two members share the ring between them."""
        first, second = self.sim.nodes[0], self.sim.nodes[1]
        walked = {
            "nodes": [
                {"node_id": id_hex(first.node_id), "address": "a:1"},
                {"node_id": id_hex(second.node_id), "address": "b:2"},
            ],
            "complete": False,
        }
        view = ring_view(first, walked)
        self.assertFalse(view["complete"])
        self.assertAlmostEqual(sum(m["share"] for m in view["members"]), 1.0)

    def test_a_ring_of_one(self) -> None:
        """A lone member is responsible for the whole ring."""
        walked = {"nodes": [{"node_id": id_hex(self.node.node_id), "address": "a:1"}]}
        [member] = ring_view(self.node, {**walked, "complete": True})["members"]
        self.assertEqual(member["share"], 1.0)
        self.assertEqual(member["arc_from"], member["node_id"])

    def test_tables_json(self) -> None:
        """A member's tables in hex, with how old the report is."""
        tables = PeerTables(
            peer=5,
            predecessors=(4,),
            successors=(6, 7),
            fingers=(9,),
            uptime_seconds=30,
            received_at=10.0,
        )
        self.assertEqual(
            tables_json(tables, 12.5),
            {
                "node_id": id_hex(5),
                "predecessors": [id_hex(4)],
                "successors": [id_hex(6), id_hex(7)],
                "fingers": [id_hex(9)],
                "uptime_seconds": 30,
                "age_seconds": 2.5,
            },
        )


class RingWalksTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        #: The walks started; walk_ring is replaced so the test decides when each ends.
        self.walks: list[Deferred[dict[str, Any]]] = []

        def walk(node: Any) -> Deferred[dict[str, Any]]:
            d: Deferred[dict[str, Any]] = Deferred()
            self.walks.append(d)
            return d

        self.patch(ring_view_module, "walk_ring", walk)
        self.cache = RingWalks(None, self.clock, max_age_seconds=4)  # type: ignore[arg-type]

    def test_callers_share_one_walk(self) -> None:
        """Callers during a walk wait for it; callers within the age get it without a walk."""
        first, second = self.cache.walk(), self.cache.walk()
        self.assertEqual(len(self.walks), 1)
        self.walks[0].callback({"nodes": []})
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.clock.advance(4)
        self.successResultOf(self.cache.walk())
        self.assertEqual(len(self.walks), 1)
        self.clock.advance(0.5)
        self.cache.walk()
        self.assertEqual(len(self.walks), 2)

    def test_a_failed_walk_is_not_kept(self) -> None:
        first = self.cache.walk()
        self.walks[0].errback(RequestTimeout("no answer"))
        self.failureResultOf(first, RequestTimeout)
        self.cache.walk()
        self.assertEqual(len(self.walks), 2)


class RingRoutesTests(SynchronousTestCase):
    """The routes over the real site: the admin token is required, answers are the JSON above."""

    def setUp(self) -> None:
        self.sim = RingSimulation(SMALL_TABLES, seed=23)
        self.addCleanup(self.sim.stop_all)
        self.sim.grow(4)
        self.sim.run_until(self.sim.consistent, 120)
        self.node: OverlayNode = self.sim.nodes[0]
        self.site = build_site(
            status=dict,
            metrics=CollectorRegistry(),
            api=overlay_api_routes(self.node),
            admin_token=TOKEN,
            title="t",
            ring_page=True,
            reactor=self.sim.clock,
        )

    def get(self, path: str, token: str | None = TOKEN) -> Any:
        connection = Connection(self.site)
        connection.send(http_request("GET", path, token=token))
        for _ in range(400):
            if connection.transport.value():
                break
            self.sim.clock.advance(0.05)
        return connection.response()

    def test_ring_data_needs_the_token(self) -> None:
        """The walk, the view and the tables are 401 without the token, like the rest of the API."""
        other = id_hex(self.sim.nodes[2].node_id)
        for path in ("/api/ring", "/api/ring-view", f"/api/peer-tables?node={other}"):
            response = self.get(path, token=None)
            self.assertEqual(response.code, 401, path)
            self.assertIn("admin token", response.json()["error"])

    def test_ring_view_route(self) -> None:
        response = self.get("/api/ring-view")
        self.assertEqual(response.code, 200)
        view = response.json()
        self.assertEqual(view["count"], 4)
        self.assertEqual(view["node_id"], id_hex(self.node.node_id))

    def test_peer_tables_route(self) -> None:
        """Another member's tables come over the ring; a malformed id is a 400 saying what to give."""
        other = self.sim.nodes[2]
        response = self.get(f"/api/peer-tables?node={id_hex(other.node_id)}")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json()["successors"], [id_hex(p) for p in other.topology.successors]
        )
        for bad in ("", "node=xyz", "node=" + "0" * 31):
            response = self.get(f"/api/peer-tables?{bad}")
            self.assertEqual(response.code, 400, bad)
            self.assertIn("32 hex digits", response.json()["error"])

    def test_peer_tables_timeout_is_a_502(self) -> None:
        self.patch(self.node, "peer_tables", lambda peer: fail(RequestTimeout("sent no Update")))
        response = self.get(f"/api/peer-tables?node={id_hex(self.sim.nodes[1].node_id)}")
        self.assertEqual(response.code, 502)
        self.assertIn("sent no Update", response.json()["error"])

    def test_own_tables(self) -> None:
        self.patch(
            self.node, "peer_tables", lambda peer: succeed(PeerTables(peer, (), (), (), 1, 0.0))
        )
        response = self.get(f"/api/peer-tables?node={id_hex(self.node.node_id)}")
        self.assertEqual(response.json()["node_id"], id_hex(self.node.node_id))
