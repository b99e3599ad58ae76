"""Tests for the status/metrics/admin HTTP site, driven through real HTTP parsing in memory."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
from io import BytesIO
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from p2psip.web import site as site_module
from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.web.site import (
    IDLE_TIMEOUT_SECONDS,
    MAX_REQUEST_BODY_BYTES,
    REQUEST_DEADLINE_SECONDS,
    ApiError,
    ApiRoute,
    allowed_host,
    body_field,
    build_site,
    http_service,
    query_argument,
)


class Response:
    """An HTTP/1.0 response parsed from what the site wrote."""

    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.code = int(status_line.split()[1])
        self.headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


class Connection:
    """One HTTP connection to the site over an in-memory transport, by default to 127.0.0.1:8084."""

    def __init__(self, site: Site, local: Any = None) -> None:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        self.channel = site.buildProtocol(peer)
        self.transport = StringTransport(local or IPv4Address("TCP", "127.0.0.1", 8084), peer)
        self.channel.makeConnection(self.transport)

    def send(self, raw: bytes) -> None:
        self.channel.dataReceived(raw)

    def response(self) -> Response:
        return Response(self.transport.value())

    def close(self) -> None:
        self.channel.connectionLost(Failure(ConnectionDone()))


#: The admin token the test sites are built with.
TOKEN = "t" * 43


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    host: str = "127.0.0.1:8084",
    token: str | None = TOKEN,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.0", f"Host: {host}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class SiteTestsMixin:
    """Builds a site with an echo API and records what the API saw."""

    def make_site(self, **overrides: Any) -> Site:
        self.calls: list[tuple[dict[str, str], dict[str, Any] | None]] = []
        self.registry = CollectorRegistry()
        Counter("p2psip_test_total", "Test counter.", registry=self.registry).inc(3)

        def echo(args: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
            self.calls.append((args, body))
            return {"args": args, "body": body}

        def refuse(args: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
            raise ApiError(404, f"nothing stored under {args.get('name')}")

        def broken(args: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
            raise RuntimeError("bug")

        settings: dict[str, Any] = {
            "status": lambda: {"node": {"id": "00ff"}, "storage": {"values": 2}},
            "metrics": self.registry,
            "api": {
                "echo": ApiRoute(("GET", "POST"), echo),
                "get": ApiRoute(("GET",), refuse),
                "broken": ApiRoute(("GET",), broken),
            },
            "admin_token": TOKEN,
            "title": "p2psip peer <test>",
            "reactor": Clock(),
        }
        settings.update(overrides)
        return build_site(**settings)

    def fetch(self, site: Site, raw: bytes) -> Response:
        connection = Connection(site)
        connection.send(raw)
        return connection.response()


class StatusAndMetricsTests(SiteTestsMixin, SynchronousTestCase):
    def test_status_json(self) -> None:
        """GET /status answers the status callable's value as JSON."""
        response = self.fetch(self.make_site(), http_request("GET", "/status"))
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers["content-type"], "application/json; charset=utf-8")
        self.assertEqual(response.json(), {"node": {"id": "00ff"}, "storage": {"values": 2}})

    def test_status_deferred(self) -> None:
        """A status callable may return a Deferred; the answer waits for it."""
        pending: Deferred[dict[str, Any]] = Deferred()
        connection = Connection(self.make_site(status=lambda: pending))
        connection.send(http_request("GET", "/status"))
        self.assertEqual(connection.transport.value(), b"")
        pending.callback({"ready": True})
        self.assertEqual(connection.response().json(), {"ready": True})

    def test_client_gone_before_answer(self) -> None:
        """If the client disconnects before a Deferred status fires, nothing is written or logged."""
        pending: Deferred[dict[str, Any]] = Deferred()
        connection = Connection(self.make_site(status=lambda: pending))
        connection.send(http_request("GET", "/status"))
        connection.close()
        pending.callback({"ready": True})
        self.assertEqual(connection.transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_status_failure_is_500(self) -> None:
        """A status callable that raises gives a JSON 500 and a logged failure."""

        def broken() -> dict[str, Any]:
            raise KeyError("oops")

        response = self.fetch(self.make_site(status=broken), http_request("GET", "/status"))
        self.assertEqual(response.code, 500)
        self.assertIn("error", response.json())
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_unserialisable_status_is_500(self) -> None:
        """A status that is not JSON-serialisable gives a 500, not a broken connection."""
        response = self.fetch(
            self.make_site(status=lambda: {"raw": b"bytes"}), http_request("GET", "/status")
        )
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_status_refuses_post(self) -> None:
        """/status is read-only."""
        response = self.fetch(self.make_site(), http_request("POST", "/status"))
        self.assertEqual(response.code, 405)

    def test_metrics(self) -> None:
        """GET /metrics serves the role's registry in Prometheus text format 0.0.4."""
        site = self.make_site()
        response = self.fetch(site, http_request("GET", "/metrics"))
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8"
        )
        self.assertEqual(response.headers["cache-control"], "no-store")
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}
        family = families["p2psip_test"]
        self.assertEqual(family.type, "counter")
        totals = [s.value for s in family.samples if s.name == "p2psip_test_total"]
        self.assertEqual(totals, [3.0])

    def test_metrics_read_at_each_scrape(self) -> None:
        """Each scrape renders the registry as it is then, not as it was when the site was built."""
        site = self.make_site()
        Counter("p2psip_later_total", "Made after the site.", registry=self.registry).inc(2)
        body = self.fetch(site, http_request("GET", "/metrics")).body
        self.assertIn(b"p2psip_later_total 2.0\n", body)

    def test_metrics_failure_is_500(self) -> None:
        """A collector that raises gives a logged 500, not a partial exposition."""

        class Broken:
            def collect(self) -> Any:
                raise RuntimeError("collector bug")

        site = self.make_site()
        self.registry.register(Broken())
        response = self.fetch(site, http_request("GET", "/metrics"))
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"p2psip_test_total", response.body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unknown_path(self) -> None:
        """Paths outside the site, or below its pages, are 404."""
        for path in ("/nothing", "/status/extra", "/metrics/", "/index.html"):
            response = self.fetch(self.make_site(), http_request("GET", path))
            self.assertEqual(response.code, 404, path)


class PageTests(SiteTestsMixin, SynchronousTestCase):
    def test_page_is_self_contained(self) -> None:
        """The page has the escaped title, no external assets and a strict CSP."""
        response = self.fetch(self.make_site(), http_request("GET", "/"))
        self.assertEqual(response.code, 200)
        self.assertTrue(response.headers["content-type"].startswith("text/html"))
        page = response.body.decode("utf-8")
        self.assertIn("<title>p2psip peer &lt;test&gt;</title>", page)
        self.assertNotRegex(page, r"(src|href)=\"(https?:)?//")
        self.assertIn("default-src 'none'", response.headers["content-security-policy"])
        self.assertIn('data-ring="no"', page)

    def test_csp_allows_exactly_the_inline_script_and_style(self) -> None:
        """The CSP hashes match the page's inline script and style, so browsers run them."""
        response = self.fetch(self.make_site(), http_request("GET", "/"))
        page = response.body.decode("utf-8")
        policy = response.headers["content-security-policy"]
        for tag in ("script", "style"):
            [inline] = re.findall(f"<{tag}>(.*?)</{tag}>", page, re.S)
            digest = base64.b64encode(hashlib.sha256(inline.encode("utf-8")).digest()).decode()
            self.assertIn(f"{tag}-src 'sha256-{digest}'", policy)

    def test_ring_page(self) -> None:
        """ring_page=True tells the page to draw the ring from the token-protected ring view."""
        response = self.fetch(self.make_site(ring_page=True), http_request("GET", "/"))
        page = response.body.decode("utf-8")
        self.assertIn('data-ring="yes"', page)
        self.assertIn('getJson("api/ring-view", true)', page)
        self.assertIn('"api/peer-tables?node="', page)
        self.assertIn('<form id="token-form" hidden>', page)
        # The token stays in the tab: never in localStorage, never in a cookie.
        self.assertIn("sessionStorage", page)
        self.assertNotIn("localStorage", page)
        self.assertNotIn("document.cookie", page)
        self.assertIn("form-action 'none'", response.headers["content-security-policy"])


class ApiTests(SiteTestsMixin, SynchronousTestCase):
    def test_get_with_query(self) -> None:
        """Query arguments arrive decoded as a str dict, with no body."""
        response = self.fetch(
            self.make_site(), http_request("GET", "/api/echo?name=sip%3Aalice%40p2psip.test&x=")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.json(), {"args": {"name": "sip:alice@p2psip.test", "x": ""}, "body": None}
        )

    def test_post_json(self) -> None:
        """A JSON object body arrives as a dict."""
        body = json.dumps({"name": "alice", "value": "x", "lifetime": 60}).encode()
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", body, "application/json")
        )
        self.assertEqual(response.json()["body"], {"name": "alice", "value": "x", "lifetime": 60})

    def test_deferred_api_result(self) -> None:
        """An API callable may answer with a Deferred."""
        pending: Deferred[dict[str, Any]] = Deferred()
        site = self.make_site(api={"slow": ApiRoute(("GET",), lambda args, body: pending)})
        connection = Connection(site)
        connection.send(http_request("GET", "/api/slow"))
        pending.callback({"hops": 3})
        self.assertEqual(connection.response().json(), {"hops": 3})

    def test_deferred_api_error(self) -> None:
        """An ApiError that fails a Deferred is answered like a raised one."""
        pending: Deferred[dict[str, Any]] = Deferred()
        site = self.make_site(api={"slow": ApiRoute(("GET",), lambda args, body: pending)})
        connection = Connection(site)
        connection.send(http_request("GET", "/api/slow"))
        pending.errback(ApiError(504, "no answer from the overlay"))
        response = connection.response()
        self.assertEqual(
            (response.code, response.json()), (504, {"error": "no answer from the overlay"})
        )

    def test_api_error(self) -> None:
        """ApiError(status, message) becomes that status with a JSON error."""
        response = self.fetch(self.make_site(), http_request("GET", "/api/get?name=bob"))
        self.assertEqual(response.code, 404)
        self.assertEqual(response.json(), {"error": "nothing stored under bob"})
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_other_exception_is_500_and_logged(self) -> None:
        """Any other exception is a 500 JSON error and a logged failure."""
        response = self.fetch(self.make_site(), http_request("GET", "/api/broken"))
        self.assertEqual(response.code, 500)
        self.assertNotIn("bug", response.json()["error"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_wrong_method(self) -> None:
        """A method the route does not accept is 405 with an Allow header."""
        response = self.fetch(self.make_site(), http_request("DELETE", "/api/echo"))
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers["allow"], "GET, POST")
        self.assertIn("error", response.json())

    def test_head_follows_get(self) -> None:
        """HEAD is accepted where GET is."""
        response = self.fetch(self.make_site(), http_request("HEAD", "/api/echo"))
        self.assertEqual(response.code, 200)

    def test_unknown_api(self) -> None:
        """An unknown API name is a JSON 404 listing the known ones."""
        for path in ("/api/nothing", "/api/echo/extra", "/api"):
            response = self.fetch(self.make_site(), http_request("GET", path))
            self.assertEqual(response.code, 404, path)
            self.assertIn("/api/echo", response.json()["error"])

    def test_bad_json(self) -> None:
        """A body that is not JSON is a 400 and the API is not called."""
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", b"{nope", "application/json")
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(self.calls, [])

    def test_json_not_an_object(self) -> None:
        """A JSON body that is not an object is a 400."""
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", b"[1, 2]", "application/json")
        )
        self.assertEqual(response.code, 400)

    def test_deeply_nested_json(self) -> None:
        """Pathologically nested JSON is a 400, not a RecursionError."""
        body = b"[" * 50000
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", body, "application/json")
        )
        self.assertEqual(response.code, 400)

    def test_body_needs_json_content_type(self) -> None:
        """A body sent as a form (as a cross-site page could) is refused with 415."""
        response = self.fetch(
            self.make_site(),
            http_request("POST", "/api/echo", b'{"a": 1}', "text/plain"),
        )
        self.assertEqual(response.code, 415)
        self.assertEqual(self.calls, [])

    def test_oversized_body(self) -> None:
        """A body larger than the limit is a 413."""
        body = b'{"v": "' + b"x" * MAX_REQUEST_BODY_BYTES + b'"}'
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", body, "application/json")
        )
        self.assertEqual(response.code, 413)

    def test_repeated_query_argument(self) -> None:
        """A query argument given twice is ambiguous and refused."""
        response = self.fetch(self.make_site(), http_request("GET", "/api/echo?name=a&name=b"))
        self.assertEqual(response.code, 400)

    def test_bad_utf8_query(self) -> None:
        """Percent-encoded bytes that are not UTF-8 are a 400."""
        response = self.fetch(self.make_site(), http_request("GET", "/api/echo?name=%ff%fe"))
        self.assertEqual(response.code, 400)

    def test_too_many_query_fields(self) -> None:
        """A query string with very many fields is refused."""
        query = "&".join(f"a{i}=1" for i in range(100))
        response = self.fetch(self.make_site(), http_request("GET", "/api/echo?" + query))
        self.assertEqual(response.code, 400)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n"


def chunked_head(path: str = "/api/echo") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:8084\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode("ascii")


class BodyLimitTests(SiteTestsMixin, SynchronousTestCase):
    """Bodies are limited while they arrive: nothing past the limit is kept."""

    def setUp(self) -> None:
        def no_temporary_files(*args: object, **kwargs: object) -> Any:
            raise AssertionError("the site opened a temporary file for a request body")

        self.patch(tempfile, "TemporaryFile", no_temporary_files)

    def request_of(self, connection: Connection) -> Any:
        """The request the connection's HTTP/1.1 channel is receiving."""
        [request] = connection.channel.requests
        return request

    def assert_refused(self, connection: Connection) -> Response:
        response = connection.response()
        self.assertEqual(response.code, 413)
        self.assertEqual(response.headers["connection"], "close")
        self.assertIn("larger than", response.json()["error"])
        self.assertTrue(connection.transport.disconnecting)
        return response

    def test_large_content_length_refused_before_the_body(self) -> None:
        """A declared 200 MiB body is a 413 as soon as the headers are in; later bytes are dropped."""
        connection = Connection(self.make_site())
        connection.send(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1:8084\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n"
        )
        self.assert_refused(connection)
        written = connection.transport.value()
        for _ in range(20):
            connection.send(b"x" * 65536)
        request = self.request_of(connection)
        self.assertIsInstance(request.content, BytesIO)
        self.assertEqual(request.content.getvalue(), b"")
        self.assertEqual(connection.transport.value(), written)
        self.assertEqual(self.calls, [])

    def test_whole_oversized_body_at_once_is_not_processed(self) -> None:
        """An oversized body that arrives complete in one read is still refused, not rendered."""
        body = b'{"v": "' + b"x" * MAX_REQUEST_BODY_BYTES + b'"}'
        connection = Connection(self.make_site())
        connection.send(http_request("POST", "/api/echo", body, "application/json"))
        self.assert_refused(connection)
        self.assertEqual(self.request_of(connection).content.getvalue(), b"")
        self.assertEqual(self.calls, [])

    def test_no_100_continue_after_the_refusal(self) -> None:
        """A client expecting 100-continue gets the 413 only, never a go-ahead."""
        connection = Connection(self.make_site())
        connection.send(
            b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1:8084\r\nExpect: 100-continue\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        self.assert_refused(connection)
        self.assertNotIn(b"100 Continue", connection.transport.value())

    def test_body_at_the_limit_is_accepted(self) -> None:
        """A JSON body of exactly the limit is read and handed to the API."""
        padding = MAX_REQUEST_BODY_BYTES - len(b'{"v": ""}')
        body = b'{"v": "' + b"x" * padding + b'"}'
        response = self.fetch(
            self.make_site(), http_request("POST", "/api/echo", body, "application/json")
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.calls[0][1]["v"]), padding)

    def test_chunked_stream_is_cut_at_the_limit(self) -> None:
        """A chunked body is counted as it comes: past the limit it is a 413 and no more is kept."""
        connection = Connection(self.make_site())
        connection.send(chunked_head())
        piece = b"x" * 10_000
        sent = 0
        while not connection.transport.value():
            connection.send(chunk(piece))
            sent += len(piece)
            self.assertLessEqual(sent, MAX_REQUEST_BODY_BYTES + len(piece))
        self.assert_refused(connection)
        request = self.request_of(connection)
        self.assertLessEqual(len(request.content.getvalue()), MAX_REQUEST_BODY_BYTES)
        written = connection.transport.value()
        for _ in range(50):
            connection.send(chunk(piece))
        connection.send(b"0\r\n\r\n")
        self.assertLessEqual(len(request.content.getvalue()), MAX_REQUEST_BODY_BYTES)
        self.assertEqual(connection.transport.value(), written)
        self.assertEqual(self.calls, [])

    def test_small_chunked_body_works(self) -> None:
        """A chunked JSON body under the limit reaches the API."""
        connection = Connection(self.make_site())
        connection.send(chunked_head() + chunk(b'{"name": ') + chunk(b'"alice"}') + b"0\r\n\r\n")
        self.assertEqual(self.calls, [({}, {"name": "alice"})])

    def test_refusals_are_warned_once_a_minute_per_source(self) -> None:
        """The first refusal from a source is a warning; more within a minute are only counted."""
        clock = Clock()
        site = self.make_site(reactor=clock)
        big = b"POST /api/echo HTTP/1.1\r\nHost: 127.0.0.1:8084\r\nContent-Length: 99999999\r\n\r\n"
        with capturedLogs() as events:
            for _ in range(5):
                connection = Connection(site)
                connection.send(big)
                connection.close()
            clock.advance(60)
            Connection(site).send(big)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 2)
        self.assertEqual(warnings[0]["source"], "127.0.0.1")
        self.assertEqual(warnings[0]["status"], 413)
        self.assertEqual(warnings[1]["held_back"], 4)


class SlowClientTests(SiteTestsMixin, SynchronousTestCase):
    """A client must send each request within a deadline, however it paces its bytes."""

    def test_dripping_client_is_cut_off(self) -> None:
        """One byte every few seconds resets the idle timeout, but not the request deadline."""
        clock = Clock()
        connection = Connection(self.make_site(reactor=clock))
        request = http_request("GET", "/status")
        for byte in request[:-1]:
            connection.send(bytes([byte]))
            clock.advance(2)
            if connection.transport.disconnecting:
                break
        self.assertTrue(connection.transport.disconnecting)
        self.assertLessEqual(clock.seconds(), REQUEST_DEADLINE_SECONDS + 2)

    def test_prompt_request_leaves_no_timer(self) -> None:
        """A request sent at once is answered and its deadline cancelled."""
        clock = Clock()
        connection = Connection(self.make_site(reactor=clock))
        connection.send(http_request("GET", "/status"))
        self.assertEqual(connection.response().code, 200)
        deadlines = [
            call for call in clock.getDelayedCalls() if call.getTime() == REQUEST_DEADLINE_SECONDS
        ]
        self.assertEqual(deadlines, [])

    def test_idle_connection_is_closed(self) -> None:
        """A connection that sends nothing is closed after the idle timeout."""
        clock = Clock()
        connection = Connection(self.make_site(reactor=clock))
        clock.advance(IDLE_TIMEOUT_SECONDS + 1)
        self.assertTrue(connection.transport.disconnecting)


class BadInputTests(SiteTestsMixin, SynchronousTestCase):
    """Malformed requests are 400s with a JSON error: never a 500, never a logged failure."""

    def assert_400(self, raw: bytes) -> None:
        response = self.fetch(self.make_site(), raw)
        self.assertEqual(response.code, 400, raw)
        self.assertIn("error", response.json())
        self.assertEqual(self.calls, [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_body_not_utf8(self) -> None:
        """A JSON body that is not UTF-8 is a 400."""
        self.assert_400(http_request("POST", "/api/echo", b'{"a": "\xff\xfe"}', "application/json"))

    def test_body_unpaired_surrogate(self) -> None:
        """A JSON string escaping half of a surrogate pair is a 400, in values and in keys."""
        for body in (b'{"value": "\\ud800"}', b'{"\\udfff": 1}', b'{"a": ["x\\udc00y"]}'):
            self.assert_400(http_request("POST", "/api/echo", body, "application/json"))

    def test_surrogate_pair_is_fine(self) -> None:
        """A properly paired surrogate escape is ordinary text."""
        response = self.fetch(
            self.make_site(),
            http_request("POST", "/api/echo", b'{"v": "\\ud83d\\ude00"}', "application/json"),
        )
        self.assertEqual((response.code, response.json()["body"]), (200, {"v": "\U0001f600"}))

    def test_bad_percent_encoding_in_query(self) -> None:
        """Percent-escapes of bytes that are not UTF-8 (or of a surrogate) are a 400."""
        for query in ("name=%ff", "%c3%28=x", "name=%ed%a0%80", "name=%e2%82"):
            self.assert_400(http_request("GET", "/api/echo?" + query))

    def test_raw_non_ascii_in_request_line(self) -> None:
        """Raw bytes above 127 in the path or query are a 400, or a 404 for an unknown path."""
        # Twisted's request-line check refuses bytes above 176 (decimal)
        # itself; 127 to 176 get through to the site.
        for target, code in (
            (b"/api/echo?name=\xc3\xa9", 400),
            (b"/api/echo?name=\x80\x9f", 400),
            (b"/api/echo?\x7f=1", 200),
            (b"/api/\xff\xfe", 400),
            (b"/api/\x80", 404),
            (b"/\x80", 404),
        ):
            raw = (
                b"GET " + target + b" HTTP/1.0\r\nHost: 127.0.0.1:8084\r\n"
                b"Authorization: Bearer " + TOKEN.encode("ascii") + b"\r\n\r\n"
            )
            response = self.fetch(self.make_site(), raw)
            self.assertEqual(response.code, code, target)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bad_escapes_in_api_path(self) -> None:
        """An API name that is not UTF-8 once unescaped is a JSON 404 like any unknown name."""
        for path in (b"/api/%ff", b"/api/%ed%a0%80", b"/api/echo%00", b"/api/%"):
            raw = b"GET " + path + b" HTTP/1.0\r\nHost: 127.0.0.1:8084\r\n\r\n"
            response = self.fetch(self.make_site(), raw)
            self.assertEqual(response.code, 404, path)
            self.assertIn("no such API", response.json()["error"])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_form_bodies_are_not_parsed(self) -> None:
        """A multipart body (which Twisted would parse into args) is refused, not parsed."""
        body = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n'
        response = self.fetch(
            self.make_site(),
            http_request("POST", "/api/echo", body, "multipart/form-data; boundary=b"),
        )
        self.assertEqual(response.code, 415)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_error_answer_with_a_surrogate_stays_utf8(self) -> None:
        """An error message holding an unpaired surrogate is written as its JSON escape."""

        def refuse(args: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
            raise ApiError(404, "nothing under \ud800")

        site = self.make_site(api={"get": ApiRoute(("GET",), refuse)})
        response = self.fetch(site, http_request("GET", "/api/get"))
        self.assertEqual(response.code, 404)
        response.body.decode("utf-8")
        self.assertEqual(response.json(), {"error": "nothing under \ud800"})


class TokenTests(SiteTestsMixin, SynchronousTestCase):
    """The API needs the admin token; the pages, /status and /metrics do not."""

    def refused(self, response: Response) -> str:
        self.assertEqual(response.code, 401)
        self.assertEqual(self.calls, [])
        self.assertTrue(response.headers["www-authenticate"].startswith("Bearer "))
        error: str = response.json()["error"]
        return error

    def test_token_accepted(self) -> None:
        """The right token, with the scheme in any case, reaches the API."""
        site = self.make_site()
        self.assertEqual(self.fetch(site, http_request("GET", "/api/echo")).code, 200)
        raw = http_request("GET", "/api/echo", token=None).replace(
            b"\r\n\r\n", f"\r\nAuthorization: bEaReR  {TOKEN} \r\n\r\n".encode()
        )
        self.assertEqual(self.fetch(site, raw).code, 200)

    def test_missing_token(self) -> None:
        """No Authorization header is a 401 that says where the token is."""
        response = self.fetch(self.make_site(), http_request("GET", "/api/echo", token=None))
        error = self.refused(response)
        self.assertIn("admin-token", error)
        self.assertIn("--data-dir", error)
        self.assertEqual(response.headers["www-authenticate"], 'Bearer realm="p2psip admin API"')

    def test_wrong_tokens(self) -> None:
        """A wrong, truncated, extended or empty token is a 401 marked invalid_token."""
        for token in ("x" * 43, TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "\u00e9" * 43):
            raw = http_request("POST", "/api/echo", b'{"a": 1}', "application/json", token=token)
            response = self.fetch(self.make_site(), raw.replace("\u00e9".encode(), b"\xe9"))
            self.assertIn("wrong admin token", self.refused(response))
            self.assertIn('error="invalid_token"', response.headers["www-authenticate"])

    def test_malformed_authorization(self) -> None:
        """Another scheme, a bare scheme or two Authorization headers are 401s."""
        for header in (f"Basic {TOKEN}", "Bearer", "Bearer ", TOKEN):
            raw = http_request("GET", "/api/echo", token=None).replace(
                b"\r\n\r\n", f"\r\nAuthorization: {header}\r\n\r\n".encode()
            )
            self.assertIn("malformed", self.refused(self.fetch(self.make_site(), raw)), header)
        raw = http_request("GET", "/api/echo").replace(
            b"\r\n\r\n", f"\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        self.refused(self.fetch(self.make_site(), raw))

    def test_checked_before_anything_else(self) -> None:
        """Without the token even a wrong method or a bad body gets only the 401."""
        for raw in (
            http_request("DELETE", "/api/echo", token=None),
            http_request("POST", "/api/echo", b"{nope", "application/json", token=None),
            http_request("GET", "/api/broken", token=None),
        ):
            self.refused(self.fetch(self.make_site(), raw))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_constant_time_comparison(self) -> None:
        """The token is compared with hmac.compare_digest."""
        compared: list[tuple[bytes, bytes]] = []
        real = site_module.hmac.compare_digest

        def recording(a: bytes, b: bytes) -> bool:
            compared.append((a, b))
            return real(a, b)

        self.patch(site_module.hmac, "compare_digest", recording)
        self.fetch(self.make_site(), http_request("GET", "/api/echo", token="y" * 43))
        self.assertEqual(compared, [(b"y" * 43, TOKEN.encode())])

    def test_no_token_configured(self) -> None:
        """A site built without a token refuses every request to a protected route."""
        site = self.make_site(admin_token=None)
        self.assertIn(
            "no admin token", self.refused(self.fetch(site, http_request("GET", "/api/echo")))
        )

    def test_open_pages(self) -> None:
        """The page, /status and /metrics need no token; every API route does."""
        site = self.make_site(api={"ring": ApiRoute(("GET",), lambda args, body: {"nodes": []})})
        for path in ("/", "/status", "/metrics"):
            self.assertEqual(
                self.fetch(site, http_request("GET", path, token=None)).code, 200, path
            )
        self.assertEqual(self.fetch(site, http_request("GET", "/api/ring", token=None)).code, 401)

    def test_refusals_are_warned_once(self) -> None:
        """A wrong token is a warning naming the route; a guessing flood is one line a minute."""
        site = self.make_site()
        with capturedLogs() as events:
            for index in range(50):
                self.fetch(site, http_request("GET", "/api/echo", token=f"{index:043d}"))
        [warning] = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual((warning["status"], warning["source"]), (401, "127.0.0.1"))
        self.assertIn("/api/echo: wrong admin token", warning["why"])
        self.assertNotIn(TOKEN, repr(events))


class HostCheckTests(SiteTestsMixin, SynchronousTestCase):
    """The Host header must name the listener: DNS rebinding gets a 421."""

    def code(self, host: str | None, local: Any = None, path: str = "/status", **site: Any) -> int:
        raw = http_request("GET", path, host=host or "")
        if host is None:
            raw = raw.replace(b"Host: \r\n", b"")
        connection = Connection(self.make_site(**site), local)
        connection.send(raw)
        response = connection.response()
        if response.code == 421:
            self.assertIn("http-allowed-hosts", response.json()["error"])
        if response.code == 400:
            self.assertIn("localhost:", response.json()["error"])
        return response.code

    def test_own_address_and_localhost(self) -> None:
        """The listener's address with its port, and localhost with it, are accepted."""
        for host in ("127.0.0.1:8084", "localhost:8084", "LOCALHOST:8084", "localhost.:8084"):
            self.assertEqual(self.code(host), 200, host)

    def test_rebinding_names_refused(self) -> None:
        """Any other name, another address, another port or no port is a 421 everywhere on the site."""
        for host in (
            "attacker.example:8084",
            "attacker.example",
            "127.0.0.1.attacker.example:8084",
            "127.0.0.2:8084",
            "127.0.0.1:8085",
            "127.0.0.1",
            "localhost",
            "[::1]:8084",
        ):
            for path in ("/", "/status", "/metrics", "/api/echo"):
                self.assertEqual(self.code(host, path=path), 421, (host, path))
        self.assertEqual(self.calls, [])

    def test_missing_or_malformed_host(self) -> None:
        """No Host header, an empty one or a malformed one is a 400 saying what to send."""
        for host in (
            None,
            "",
            "127.0.0.1:80x",
            "[::1",
            "127.0.0.1:8084:1",
            "\u00e9:8084",
            "::1:8084",
        ):
            self.assertEqual(self.code(host), 400, host)

    def test_two_host_headers(self) -> None:
        """Two Host headers are a 400, whatever they say."""
        raw = http_request("GET", "/status").replace(
            b"\r\n\r\n", b"\r\nHost: attacker.example\r\n\r\n"
        )
        response = self.fetch(self.make_site(), raw)
        self.assertEqual(response.code, 400)
        self.assertIn("one Host header", response.json()["error"])

    def test_ipv6_listener(self) -> None:
        """On [::1] the bracketed literal, in any spelling, and localhost are accepted."""
        local = IPv6Address("TCP", "::1", 8084)
        for host in ("[::1]:8084", "[0:0::1]:8084", "localhost:8084"):
            self.assertEqual(self.code(host, local), 200, host)
        for host in ("127.0.0.1:8084", "[::2]:8084", "[::1]:8085"):
            self.assertEqual(self.code(host, local), 421, host)

    def test_dual_stack_listener(self) -> None:
        """A v4-mapped local address accepts the IPv4 literal."""
        local = IPv6Address("TCP", "::ffff:192.0.2.4", 8084)
        self.assertEqual(self.code("192.0.2.4:8084", local), 200)

    def test_port_80_default(self) -> None:
        """A Host without a port means port 80."""
        local = IPv4Address("TCP", "192.0.2.4", 80)
        self.assertEqual(self.code("192.0.2.4", local), 200)
        self.assertEqual(self.code("192.0.2.4:80", local), 200)

    def test_configured_names(self) -> None:
        """Names the operator lists are accepted with any port (a proxy in front); others are not."""
        allowed = ("Status.Example.org", "2001:db8::7")
        for host in ("status.example.org", "status.example.org:443", "STATUS.example.org.:8084"):
            self.assertEqual(self.code(host, allowed_hosts=allowed), 200, host)
        self.assertEqual(self.code("[2001:db8:0::7]:9000", allowed_hosts=allowed), 200)
        self.assertEqual(self.code("example.org:8084", allowed_hosts=allowed), 421)
        raw = http_request("GET", "/status", host="example.org:8084")
        body = self.fetch(self.make_site(allowed_hosts=allowed), raw).body
        self.assertNotIn(b"status.example.org", body)  # a rebinding page may read the 421

    def test_unix_socket_listener(self) -> None:
        """A unix: listener (no browser can reach it) accepts any Host."""
        self.assertEqual(self.code("anything", UNIXAddress(b"/run/p2psip.sock")), 200)

    def test_refusal_is_warned_once(self) -> None:
        """A refused Host is a warning naming the header; a flood of them is one line a minute."""
        site = self.make_site()
        with capturedLogs() as events:
            for _ in range(10):
                Connection(site).send(http_request("GET", "/status", host="attacker.example"))
        [warning] = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(warning["status"], 421)
        self.assertIn("'attacker.example'", warning["why"])

    def test_allowed_host_coercer(self) -> None:
        """--http-allowed-hosts takes names and addresses, lower-cased; not ports or junk."""
        self.assertEqual(allowed_host("Status.Example.org."), "status.example.org")
        self.assertEqual(allowed_host("[2001:DB8::1]"), "2001:db8::1")
        for bad in ("a.example:80", "", "a b", "*.example", "-a.example", "a..example"):
            self.assertRaises(ValueError, allowed_host, bad)


class ArgumentHelperTests(SynchronousTestCase):
    def test_query_argument(self) -> None:
        """A present argument is returned; a missing or empty one is a 400 naming it."""
        self.assertEqual(query_argument({"name": "alice"}, "name"), "alice")
        for args in ({}, {"name": ""}):
            error = self.assertRaises(ApiError, query_argument, args, "name")
            self.assertEqual((error.status, error.message), (400, "missing query argument 'name'"))

    def test_body_field(self) -> None:
        """Fields are type-checked, with defaults for missing ones and 400s naming the field."""
        body = {"name": "alice", "lifetime": 60, "flag": True}
        self.assertEqual(body_field(body, "name", str), "alice")
        self.assertEqual(body_field(body, "lifetime", int), 60)
        self.assertEqual(body_field(body, "missing", int, default=3600), 3600)
        self.assertEqual(body_field(None, "lifetime", int, default=5), 5)
        error = self.assertRaises(ApiError, body_field, body, "value", str)
        self.assertEqual(
            (error.status, error.message), (400, "the JSON body needs a field 'value'")
        )
        error = self.assertRaises(ApiError, body_field, body, "flag", int)
        self.assertEqual(error.message, "field 'flag' must be an integer")
        error = self.assertRaises(ApiError, body_field, body, "lifetime", str)
        self.assertEqual(error.message, "field 'lifetime' must be a string")


class HostileInputTests(SiteTestsMixin, SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60),
        body=st.binary(max_size=200),
        content_type=st.sampled_from(
            [None, "application/json", "text/plain", "application/json; x"]
        ),
    )
    def test_api_never_fails_on_garbage(
        self, path: str, body: bytes, content_type: str | None
    ) -> None:
        """Arbitrary paths, query strings and bodies get a client error or an answer, never a 500."""
        site = self.make_site()
        response = self.fetch(site, http_request("POST", "/api/echo" + path, body, content_type))
        self.assertIn(response.code, {200, 400, 404, 413, 415})
        self.assertEqual(self.flushLoggedErrors(), [])

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_raw_garbage_connection(self, data: bytes) -> None:
        """Raw garbage on the HTTP connection neither raises nor logs an error."""
        connection = Connection(self.make_site())
        connection.send(data)
        connection.close()
        self.assertEqual(self.flushLoggedErrors(), [])


class HttpServiceTests(SynchronousTestCase):
    def test_listens_on_endpoint_string(self) -> None:
        """http_service listens where the endpoint string says, when started."""
        reactor = MemoryReactor()
        site = build_site(
            status=dict,
            metrics=CollectorRegistry(),
            api={},
            admin_token=None,
            title="t",
            reactor=Clock(),
        )
        service = http_service("tcp:0:interface=127.0.0.1", site, reactor)
        self.assertEqual(reactor.tcpServers, [])
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, _backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        # The site, behind the per-source connection limit.
        self.assertIsInstance(factory, ConnectionLimitFactory)
        self.assertIs(factory.wrappedFactory, site)
        self.assertEqual((factory.per_source, factory.total), (32, 256))
