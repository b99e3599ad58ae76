"""
The ring page in a real browser: headless Chromium loads the bootstrap's
page from a ring of real ``twistd`` processes on loopback and the test
reads what the page's script drew.

A mediator, a bootstrap with SIP (a phone registered there) and four
peers, with neighbour lists of two so that five members need fingers;
two peers advertise an address where nothing listens, so the link
between them is the mediator's.  Chromium runs
the page's script (``--dump-dom`` after a virtual-time budget) with the
admin token in the address's fragment and a peer chosen with
``#select=``; the DOM must show every member on the ring, one arc each,
the bootstrap's links by path, the chosen peer's fingers as the peer
itself reported them, and the node's figures; the first peer's own page
draws its mediated link in the style of its path.  Without the token the
page shows the token form and no ring.  A screenshot is left in the
test's temporary directory.

Two more tests serve the page from a site in the test process.  Its
status changes between two polls: the page must show the new figures
(it updates live) and the media relay's session count once a relay runs.
A refused token brings the token form back; a node that is not in a
ring yet gets its reason shown where the ring would be.

Chromium reaches nothing but loopback (:mod:`tests.interop.browser`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import SimpleUserAgent
from p2psip.sip.users import UsersFile
from p2psip.testing import require_tool, ring_node_mediator_secret
from p2psip.util.ids import RING_SIZE
from p2psip.web.page import REFRESH_SECONDS
from p2psip.web.site import ApiError, ApiRoute, build_site
from tests.integration.processes import (
    OverlayCA,
    RoleProcess,
    overlay_arguments,
    start_mediator,
    wait_for,
)
from tests.integration.test_sip_overlay import free_udp_and_tcp_port
from tests.interop.browser import FIRST_POLL_MS, DomReader, chromium_arguments, drawn

DOMAIN = "ringpage.test"
#: The admin token of the in-process sites.
TOKEN = "r" * 43
MEDIATOR_SECRET = "ring-page-secret"
#: Where the first two peers say they listen: nothing does, so their link is mediated.
UNREACHABLE = "127.0.0.9"
PEERS = 4
#: Short neighbour lists, and members evenly spread: each member's two
#: successors cover two fifths of the ring, so the finger for the half
#: of the ring away lies beyond them and every member has fingers.
SMALL_TABLES = ["--successors", "2", "--predecessors", "2", "--replicas", "1"]
NODE_IDS = [place * (RING_SIZE // (PEERS + 1)) + 0x5EED for place in range(PEERS + 1)]


class _Browser(ProcessProtocol):
    """One Chromium run: its stdout (the DOM it dumps), stderr, and ``ended`` with the exit code."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err = (self.err + data)[-20000:]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else int(code))


class Chromium(TestCase):
    """Headless Chromium on loopback, each run with its own fresh profile."""

    timeout = 180

    def setUp(self) -> None:
        self.chromium = require_tool("chromium")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)

    @inlineCallbacks
    def browse(self, url: str, *extra: str, budget_ms: int = FIRST_POLL_MS) -> Any:
        """Run Chromium on ``url``; fires with (stdout, stderr, exit code). Killed at cleanup."""
        profile = self.directory / f"chromium-profile-{len(os.listdir(self.directory))}"
        profile.mkdir()
        arguments = chromium_arguments(profile, url, *extra, budget_ms=budget_ms)
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(profile)}
        browser = _Browser()
        handle = reactor.spawnProcess(
            browser, self.chromium, [self.chromium, *arguments], env=environment
        )

        def stop() -> Deferred[int] | None:
            if browser.ended.called:
                return None
            handle.signalProcess("KILL")
            return browser.ended

        self.addCleanup(stop)
        code = yield browser.ended
        return browser.out, browser.err, code

    @inlineCallbacks
    def page_dom(self, url: str, budget_ms: int = FIRST_POLL_MS) -> Any:
        out, err, code = yield self.browse(url, "--dump-dom", budget_ms=budget_ms)
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return DomReader(out.decode("utf-8"))


class RingPageTests(Chromium):
    def setUp(self) -> None:
        super().setUp()
        self.ca = OverlayCA(self.directory / "bootstrap", DOMAIN)
        self.users_path = self.directory / "users"
        users = UsersFile.load(self.users_path, missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", "alice-secret")
        users.save()

    def start(
        self, role: str, name: str, place: int, extra: list[str], users: tuple[str, ...] = ()
    ) -> RoleProcess:
        """
        The role, enrolled beforehand at its ``place`` on the ring (with
        certificates for ``users``) and logged in to the mediator with its
        own secret.
        """
        directory = self.directory / name
        self.ca.enrol_offline(directory, NODE_IDS[place])
        self.ca.issue_user_certificates(directory, users)
        secret = ring_node_mediator_secret(MEDIATOR_SECRET, directory / "data")
        mediator = ["--mediator", self.mediator, "--direct-connect-timeout", "1"]
        process = RoleProcess(
            role,
            directory,
            overlay_arguments(DOMAIN)
            + SMALL_TABLES
            + mediator
            + ["--mediator-secret", secret]
            + extra,
        )
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def test_ring_page_in_chromium(self) -> Any:
        """What the browser draws matches the ring's own answers."""
        self.mediator = start_mediator(self, self.directory / "mediator", MEDIATOR_SECRET)
        sip_port = free_udp_and_tcp_port()
        bootstrap = self.start(
            "p2psip-bootstrap",
            "bootstrap",
            0,
            self.ca.bootstrap_arguments()
            + ["--sip", f"udp:{sip_port}:interface=127.0.0.1", "--users", str(self.users_path)],
            users=(f"alice@{DOMAIN}",),
        )
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        # The first two peers advertise an address where nothing listens, so
        # the link between them is the mediator's ("direct" on loopback).
        peers = [
            self.start(
                "p2psip-peer",
                f"peer{index}",
                index + 1,
                ["--bootstrap", bootstrap.endpoint]
                + (["--advertise", UNREACHABLE] if index < 2 else []),
            )
            for index in range(PEERS)
        ]
        yield wait_for(
            lambda: bootstrap.call("ring").addCallback(
                lambda r: r["complete"] and r["count"] == PEERS + 1
            ),
            60,
            "the ring to include every peer",
        )
        # A phone registers at the bootstrap, so its page has a registration to show.
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(transport.stop)
        alice = SimpleUserAgent(
            f"sip:alice@{DOMAIN}",
            "alice-secret",
            transport,
            Hop("UDP", "127.0.0.1", sip_port),
            reactor,
        )
        self.addCleanup(alice.stop)
        yield alice.register()

        chosen = (yield peers[1].call("status"))["node_id"]
        unreachable = [(yield peers[0].call("status"))["node_id"], chosen]

        def chosen_has_fingers() -> Deferred[bool]:
            return bootstrap.call("peer_tables", chosen).addCallback(lambda t: bool(t["fingers"]))

        def mediated() -> Deferred[bool]:
            return (
                peers[0]
                .call("ring_view")
                .addCallback(
                    lambda v: (chosen, "direct") in {(k["peer"], k["path"]) for k in v["links"]}
                )
            )

        yield wait_for(chosen_has_fingers, 60, "the chosen peer to have fingers")
        yield wait_for(mediated, 30, "the mediator's link from peer 0 to peer 1")
        view = yield bootstrap.call("ring_view")
        tables = yield bootstrap.call("peer_tables", chosen)
        token = (self.directory / "bootstrap" / "data" / "admin-token").read_text().strip()
        peer_token = (self.directory / "peer0" / "data" / "admin-token").read_text().strip()
        page = f"http://127.0.0.1:{bootstrap.http_port}/"
        screenshot = self.directory / "ring-page.png"
        # The browsers mostly wait on the network: run them side by side.
        with_token, peer_page, without_token, shot = yield gatherResults(
            [
                self.page_dom(f"{page}#token={token}&select={chosen}"),
                self.page_dom(f"http://127.0.0.1:{peers[0].http_port}/#token={peer_token}"),
                self.page_dom(page),
                self.browse(
                    f"{page}#token={token}&select={chosen}",
                    f"--screenshot={screenshot}",
                    "--window-size=1100,1500",
                ),
            ],
            consumeErrors=True,
        )
        self.check_ring_drawing(with_token, view, tables, chosen)
        self.check_peer_page(peer_page, unreachable)
        self.check_without_token(without_token)
        _, err, code = shot
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        self.assertEqual(screenshot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")

    def check_ring_drawing(
        self, dom: DomReader, view: dict[str, Any], tables: dict[str, Any], chosen: str
    ) -> None:
        """The bootstrap's page: every member, arcs, its links by path, the chosen one's fingers."""
        members = {m["node_id"] for m in view["members"]}
        self.assertEqual(len(members), PEERS + 1)
        dots = dom.with_class("circle", "member")
        self.assertEqual({d.attributes["data-node-id"] for d in dots}, members)
        [this] = [d for d in dots if "this" in d.classes]
        self.assertEqual(this.attributes["data-node-id"], view["node_id"])
        [picked] = [d for d in dots if "selected" in d.classes]
        self.assertEqual(picked.attributes["data-node-id"], chosen)
        arcs = dom.with_class("path", "arc")
        self.assertEqual({a.attributes["data-node-id"] for a in arcs}, members)
        # The bootstrap's links, each drawn in the style of its path.
        drawn_links = drawn(dom, "link", "data-path")
        linked = {(link["peer"], link["path"]) for link in view["links"] if link["member"]}
        self.assertTrue(drawn_links)
        self.assertEqual(drawn_links, linked)
        # The chosen peer's fingers, as it reported them in its full Update.
        fingers = {peer for peer, _ in drawn(dom, "finger", "class")}
        self.assertEqual(fingers, set(tables["fingers"]) - {chosen})
        self.assertTrue(fingers)
        self.assertEqual(dom.by_id("tables").attributes.get("data-node-id"), chosen)
        self.assertEqual(dom.by_id("ring").attributes.get("data-selected"), chosen)
        self.assertNotIn("hidden", dom.by_id("ring").attributes)
        self.assertIn(f"{PEERS + 1} member(s); ring complete", dom.by_id("ring-summary").text)
        # The node's figures: alice's registration, no calls, no media relay yet.
        self.assertEqual(dom.by_id("figure-registrations").text, "1")
        self.assertEqual(dom.by_id("figure-calls").text, "0")
        self.assertEqual(dom.by_id("figure-relay-sessions").text, "0")
        self.assertEqual(dom.by_id("figure-state").text, "joined")

    def check_peer_page(self, dom: DomReader, unreachable: list[str]) -> None:
        """Peer 0's own page: the mediator's link to peer 1, and plain connects."""
        links = drawn(dom, "link", "data-path")
        self.assertIn((unreachable[1], "direct"), links)
        self.assertIn("connect", {path for _, path in links})
        [this] = [d for d in dom.with_class("circle", "member") if "this" in d.classes]
        self.assertEqual(this.attributes["data-node-id"], unreachable[0])
        self.assertEqual(dom.by_id("figure-registrations").text, "-")  # no SIP there

    def check_without_token(self, dom: DomReader) -> None:
        """Without the token: the figures (from /status), the token form, no ring."""
        self.assertIn("hidden", dom.by_id("ring").attributes)
        self.assertNotIn("hidden", dom.by_id("token-form").attributes)
        self.assertIn("admin-token", dom.by_id("token-why").text)
        self.assertEqual(dom.with_class("circle", "member"), [])
        self.assertEqual(dom.by_id("figure-registrations").text, "1")


class LiveFiguresTests(Chromium):
    @inlineCallbacks
    def test_figures_update_live(self) -> Any:
        """A later poll's status replaces the figures: new calls, and a relay's sessions."""
        polls: list[int] = []

        def status() -> dict[str, Any]:
            polls.append(1)
            later = len(polls) > 1
            sip: dict[str, Any] = {
                "registrations": {"aors": 2 if later else 1, "bindings": 3 if later else 1},
                "calls": {
                    "in_progress": 2 if later else 0,
                    "answered": 5,
                    "challenged": 5,
                    "failed": 1,
                },
            }
            if later:
                sip["media_relay"] = {"policy": "nat", "sessions": 2}
            return {"state": "joined", "role": "peer", "sip": sip}

        site = build_site(
            status=status,
            metrics=CollectorRegistry(),
            api={},
            admin_token=None,
            title="p2psip peer",
            reactor=reactor,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        # Past one refresh interval: the page has polled twice.
        dom = yield self.page_dom(url, budget_ms=REFRESH_SECONDS * 1000 + 2000)
        self.assertGreaterEqual(len(polls), 2)
        self.assertEqual(dom.by_id("figure-registrations").text, "2")
        self.assertEqual(dom.by_id("figure-calls").text, "2")
        self.assertEqual(dom.by_id("figure-relay-sessions").text, "2")
        page_text = " ".join(e.text for e in dom.elements)
        self.assertIn("5 answered, 1 failed", page_text)
        self.assertIn("media relay policy: nat", page_text)
        self.assertIn("3 binding(s)", page_text)


class RingErrorsTests(Chromium):
    """What the page says when the ring data cannot be had: a refused token, a node not in a ring."""

    @inlineCallbacks
    def test_refused_token_and_unavailable_ring(self) -> Any:
        def not_in_ring(args: dict[str, str], body: Any) -> dict[str, Any]:
            raise ApiError(503, "the node is joining, not in a ring yet; see /status and its log")

        site = build_site(
            status=lambda: {"state": "joining", "role": "peer"},
            metrics=CollectorRegistry(),
            api={"ring-view": ApiRoute(("GET",), not_in_ring)},
            admin_token=TOKEN,
            title="p2psip peer",
            ring_page=True,
            reactor=reactor,
        )
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        page = f"http://127.0.0.1:{port.getHost().port}/"
        refused, joining = yield gatherResults(
            [self.page_dom(page + "#token=" + "w" * 43), self.page_dom(page + "#token=" + TOKEN)],
            consumeErrors=True,
        )
        self.assertNotIn("hidden", refused.by_id("token-form").attributes)
        self.assertIn("refused", refused.by_id("token-why").text)
        self.assertIn("hidden", refused.by_id("ring").attributes)
        self.assertNotIn("hidden", joining.by_id("ring").attributes)
        self.assertIn("not in a ring yet", joining.by_id("ring-error").text)
        self.assertIn("hidden", joining.by_id("token-form").attributes)
        self.assertEqual(joining.by_id("figure-state").text, "joining")
