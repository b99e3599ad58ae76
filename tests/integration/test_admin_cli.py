"""
The ``p2psip`` admin commands against a real site on a loopback port.

The unit tests (``tests/cli/test_admin.py``) replace urlopen; these let
urllib, the HTTP server and the JSON API meet for real.  The CLI blocks,
so it runs in a thread while the reactor serves.  The attacks of the
admin API review (no token, a rebinding Host, a huge body) are also sent
over a real socket here.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.cli import main
from p2psip.testing import free_port
from prometheus_client import CollectorRegistry
from p2psip.web.site import ApiError, ApiRoute, build_site
from tests.cli.test_admin import NODE_B, NODE_C, STATUS, TOKEN, write_token


class LoopbackTests(TestCase):
    """The CLI against a real site on a loopback port, the CLI in a thread."""

    def setUp(self) -> None:
        self.stored: list[dict[str, Any]] = []

        def put(args: dict[str, str], body: dict[str, Any] | None) -> dict[str, Any]:
            if body is None or "name" not in body:
                raise ApiError(400, "put needs a JSON body with name and value")
            self.stored.append(body)
            return {
                "resource_id": NODE_B,
                "stored_at": NODE_C,
                "replicas": [],
                "route": [NODE_C],
                "hops": 1,
            }

        def get(args: dict[str, str], body: dict[str, Any] | None) -> Deferred[dict[str, Any]]:
            answer: Deferred[dict[str, Any]] = Deferred()
            reactor.callLater(0, answer.errback, ApiError(504, f"no answer for {args['name']}"))
            return answer

        site = build_site(
            status=lambda: STATUS,
            metrics=CollectorRegistry(),
            api={"put": ApiRoute(("POST",), put), "get": ApiRoute(("GET",), get)},
            admin_token=TOKEN,
            title="test",
        )
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"
        self.data_dir = self.mktemp()
        write_token(self.data_dir)
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    @inlineCallbacks
    def test_put_over_http(self) -> Any:
        """put reaches the API with its JSON body and prints the answer."""
        status = yield deferToThread(
            main,
            [
                "--api",
                self.url,
                "--data-dir",
                self.data_dir,
                "put",
                "alice",
                "v1",
                "--lifetime",
                "30",
            ],
        )
        self.assertEqual(status, 0, self.stderr.getvalue())
        self.assertEqual(self.stored, [{"name": "alice", "value": "v1", "lifetime": 30}])
        self.assertIn(f"stored at:   {NODE_C}", self.stdout.getvalue())

    @inlineCallbacks
    def test_status_over_http(self) -> Any:
        """status fetches /status over HTTP."""
        status = yield deferToThread(main, ["--api", self.url, "status", "--json"])
        self.assertEqual((status, json.loads(self.stdout.getvalue())), (0, STATUS))

    @inlineCallbacks
    def test_api_error_over_http(self) -> Any:
        """An ApiError from a Deferred reaches the CLI as its message and exit 1."""
        status = yield deferToThread(
            main, ["--api", self.url, "--data-dir", self.data_dir, "get", "bob"]
        )
        self.assertEqual(status, 1)
        self.assertIn("answered 504: no answer for bob", self.stderr.getvalue())

    @inlineCallbacks
    def test_nothing_listening(self) -> Any:
        """A port with no listener gives the 'cannot reach' message."""
        port = free_port(socket.SOCK_STREAM)
        status = yield deferToThread(main, ["--api", f"http://127.0.0.1:{port}", "status"])
        self.assertEqual(status, 1)
        self.assertIn("cannot reach the admin API", self.stderr.getvalue())

    @inlineCallbacks
    def test_wrong_token_over_http(self) -> Any:
        """A token from another data directory is refused; the CLI names that file."""
        other = self.mktemp()
        path = write_token(other, "w" * 43)
        status = yield deferToThread(
            main, ["--api", self.url, "--data-dir", other, "put", "a", "b"]
        )
        self.assertEqual((status, self.stored), (1, []))
        self.assertIn("answered 401: wrong admin token", self.stderr.getvalue())
        self.assertIn(str(path), self.stderr.getvalue())

    @inlineCallbacks
    def test_attacks_over_a_real_socket(self) -> Any:
        """No token is a 401, a rebinding Host a 421, a 200 MiB Content-Length a 413 before the body."""

        def exchange(headers: str) -> Any:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.port.getHost().port, timeout=10
            )
            try:
                connection.putrequest("POST", "/api/put", skip_host=True)
                for line in headers.strip().splitlines():
                    name, _, value = line.partition(":")
                    connection.putheader(name, value.strip())
                connection.endheaders()
                response = connection.getresponse()
                return response.status, response.read(), response.getheader("Connection")
            finally:
                connection.close()

        port = self.port.getHost().port
        status, body, _ = yield deferToThread(
            exchange, f"Host: 127.0.0.1:{port}\nContent-Length: 0"
        )
        self.assertEqual(status, 401)
        status, body, _ = yield deferToThread(
            exchange,
            f"Host: rebound.example:{port}\nAuthorization: Bearer {TOKEN}\nContent-Length: 0",
        )
        self.assertEqual(status, 421)
        self.assertIn(b"http-allowed-hosts", body)
        status, body, connection = yield deferToThread(
            exchange,
            f"Host: 127.0.0.1:{port}\nAuthorization: Bearer {TOKEN}\nContent-Length: 209715200",
        )
        self.assertEqual((status, connection), (413, "close"))
        self.assertEqual(self.stored, [])
