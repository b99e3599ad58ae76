"""Tests for the ``p2psip`` admin subcommands and their HTTP client."""

from __future__ import annotations

import io
import json
import os
import sys
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.cli import build_parser, main
from p2psip.cli import admin

NODE_A = "0" * 31 + "a"
NODE_B = "8" + "0" * 31
NODE_C = "f" * 32

STATUS = {
    "uptime_seconds": 12,
    "connections": {"open": 2},
    "node": {"node_id": NODE_A, "address": "tcp:127.0.0.1:6084"},
    "storage": {"values": 3, "kinds": [1]},
    "neighbours": {
        "successors": [{"node_id": NODE_B, "address": "tcp:127.0.0.1:6085"}],
        "predecessors": [],
    },
}


class FakeResponse(io.BytesIO):
    """What urlopen returns: a readable context manager."""


class FakeOpener:
    """Stands in for urllib.request.urlopen: records requests and answers from a script."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.requests: list[urllib.request.Request] = []
        self.timeouts: list[float] = []

    def __call__(self, request: urllib.request.Request, timeout: float) -> FakeResponse:
        self.requests.append(request)
        self.timeouts.append(timeout)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, bytes):
            return FakeResponse(answer)
        return FakeResponse(json.dumps(answer).encode("utf-8"))

    def body(self, index: int = -1) -> Any:
        data = self.requests[index].data
        assert isinstance(data, bytes)
        return json.loads(data)


def http_error(code: int, body: bytes, reason: str = "Not Found") -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x/", code, reason, Message(), io.BytesIO(body))


TOKEN = "k" * 43


def write_token(directory: str, token: str = TOKEN, mode: int = 0o600) -> Path:
    """A role's data directory holding an admin token file."""
    os.makedirs(directory, exist_ok=True)
    path = Path(directory, "admin-token")
    path.write_text(token + "\n", encoding="ascii")
    path.chmod(mode)
    return path


class CommandTestsMixin:
    """
    Runs ``p2psip`` in-process with urlopen replaced and output captured,
    with $P2PSIP_DATA_DIR naming a data directory that holds :data:`TOKEN`.
    """

    def run_cli(self, *argv: str, answers: tuple[object, ...] = ()) -> tuple[int, str, str]:
        if not hasattr(self, "data_dir"):
            self.data_dir = self.mktemp()  # type: ignore[attr-defined]
            write_token(self.data_dir)
        self.patch(os, "environ", dict(os.environ, P2PSIP_DATA_DIR=self.data_dir))  # type: ignore[attr-defined]
        self.opener = FakeOpener(*answers)
        self.patch(urllib.request, "urlopen", self.opener)  # type: ignore[attr-defined]
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", stdout)  # type: ignore[attr-defined]
        self.patch(sys, "stderr", stderr)  # type: ignore[attr-defined]
        status = main(list(argv))
        return status, stdout.getvalue(), stderr.getvalue()


class CommandTests(CommandTestsMixin, SynchronousTestCase):
    def test_status_sections(self) -> None:
        """status prints node, neighbours, storage, connections first, then the rest."""
        status, out, err = self.run_cli("status", answers=(STATUS,))
        self.assertEqual((status, err), (0, ""))
        headings = [line for line in out.splitlines() if line and not line.startswith(" ")]
        self.assertEqual(
            headings, ["node", "neighbours", "storage", "connections", "uptime_seconds: 12"]
        )
        self.assertIn(f"  node_id: {NODE_A}\n", out)
        self.assertIn(f"    - node_id={NODE_B}  address=tcp:127.0.0.1:6085\n", out)
        self.assertIn("  predecessors: (none)\n", out)
        self.assertEqual(self.opener.requests[0].full_url, "http://127.0.0.1:8084/status")
        self.assertEqual(self.opener.requests[0].get_method(), "GET")

    def test_status_sip_section(self) -> None:
        """A super-node's sip section is printed after connections, registrations and counters nested."""
        sip = {
            "address": "127.0.0.1:5060",
            "registrations": {"aors": 100, "bindings": 100},
            "final_responses": {"INVITE": {"200": 7, "404": 1}},
        }
        status, out, _ = self.run_cli("status", answers=({**STATUS, "sip": sip},))
        headings = [line for line in out.splitlines() if line and not line.startswith(" ")]
        self.assertEqual(headings[4], "sip")
        self.assertIn("  registrations:\n    aors: 100\n    bindings: 100\n", out)
        self.assertIn("    INVITE:\n      200: 7\n      404: 1\n", out)

    def test_status_json(self) -> None:
        """--json prints the API's answer as JSON."""
        status, out, _ = self.run_cli("status", "--json", answers=(STATUS,))
        self.assertEqual((status, json.loads(out)), (0, STATUS))

    def test_ring(self) -> None:
        """ring lists nodes in ring order under a summary line."""
        ring = {
            "nodes": [
                {"node_id": NODE_C, "address": "tcp:127.0.0.1:3"},
                {"node_id": NODE_A, "address": "tcp:127.0.0.1:1"},
                {"node_id": NODE_B, "address": "tcp:127.0.0.1:2"},
            ],
            "complete": True,
        }
        status, out, _ = self.run_cli("--api", "http://127.0.0.1:9000/", "ring", answers=(ring,))
        lines = out.splitlines()
        self.assertEqual(lines[0], "3 nodes, ring complete")
        self.assertEqual([line.split()[0] for line in lines[2:]], [NODE_A, NODE_B, NODE_C])
        self.assertEqual(self.opener.requests[0].full_url, "http://127.0.0.1:9000/api/ring")

    def test_ring_incomplete_tolerates_odd_entries(self) -> None:
        """Entries that are not objects, or lack fields, do not break the listing."""
        ring = {"nodes": [5, {"address": "x"}, {"node_id": "zz"}], "complete": False}
        status, out, _ = self.run_cli("ring", answers=(ring,))
        self.assertEqual(status, 0)
        self.assertIn("2 nodes, ring not complete", out)

    def test_put(self) -> None:
        """put POSTs name, value and lifetime as JSON and prints where it was stored."""
        answer = {
            "resource_id": NODE_B,
            "stored_at": NODE_C,
            "replicas": [NODE_A],
            "route": [NODE_A, NODE_C],
            "hops": 1,
        }
        status, out, _ = self.run_cli(
            "put", "sip:alice@p2psip.test", "hello", "--lifetime", "60", answers=(answer,)
        )
        self.assertEqual(status, 0)
        request = self.opener.requests[0]
        self.assertEqual(
            (request.get_method(), request.full_url), ("POST", "http://127.0.0.1:8084/api/put")
        )
        self.assertEqual(request.get_header("Content-type"), "application/json")
        self.assertEqual(
            self.opener.body(), {"name": "sip:alice@p2psip.test", "value": "hello", "lifetime": 60}
        )
        self.assertIn(f"stored at:   {NODE_C}", out)
        self.assertIn(f"route:       {NODE_A} -> {NODE_C} (1 hops)", out)

    def test_put_default_lifetime(self) -> None:
        """Without --lifetime the request leaves the lifetime to the role."""
        self.run_cli("put", "n", "v", answers=({"hops": 0},))
        self.assertEqual(self.opener.body(), {"name": "n", "value": "v"})

    def test_put_bad_lifetime(self) -> None:
        """A lifetime that is not a positive integer is a usage error."""
        self.patch(sys, "stderr", io.StringIO())
        error = self.assertRaises(SystemExit, main, ["put", "n", "v", "--lifetime", "0"])
        self.assertEqual(error.code, 2)

    def test_get_found(self) -> None:
        """get prints the value and exits 0 when something is stored."""
        answer = {
            "resource_id": NODE_B,
            "found": True,
            "value": "hello",
            "stored_at": NODE_C,
            "route": [NODE_C],
            "hops": 1,
        }
        status, out, _ = self.run_cli("get", "greeting", answers=(answer,))
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("greeting = hello\n"))
        self.assertEqual(
            self.opener.requests[0].full_url, "http://127.0.0.1:8084/api/get?name=greeting"
        )

    def test_get_registration(self) -> None:
        """get of a SIP AOR prints the registration's contacts and who serves them."""
        answer = {
            "kind": "sip-registration",
            "aor": "sip:alice@p2psip.test",
            "resource": "alice@p2psip.test",
            "resource_id": NODE_B,
            "found": True,
            "stored_at": NODE_C,
            "route": [NODE_C],
            "hops": 1,
            "bindings": [
                {
                    "contact": "sip:alice@192.0.2.9:5062",
                    "expires": 300,
                    "q": 1.0,
                    "served_by": NODE_A,
                }
            ],
        }
        status, out, _ = self.run_cli("get", "sip:alice@p2psip.test", answers=(answer,))
        self.assertEqual(status, 0)
        self.assertIn("sip:alice@p2psip.test: registered\n", out)
        self.assertIn("resource:    alice@p2psip.test (SIP-REGISTRATION)", out)
        self.assertIn(
            f"contact:     sip:alice@192.0.2.9:5062 (expires in 300 s, q=1.0, served by {NODE_A})",
            out,
        )
        answer.update(found=False, bindings=[])
        status, out, _ = self.run_cli("get", "sip:alice@p2psip.test", answers=(answer,))
        self.assertEqual(status, 1)
        self.assertIn("sip:alice@p2psip.test: not registered", out)

    def test_get_kind(self) -> None:
        """--kind data asks for the value stored under the URI itself."""
        self.run_cli("get", "--kind", "data", "sip:alice@p2psip.test", answers=({},))
        self.assertEqual(
            self.opener.requests[0].full_url,
            "http://127.0.0.1:8084/api/get?name=sip%3Aalice%40p2psip.test&kind=data",
        )

    def test_get_not_found(self) -> None:
        """get says not found and exits 1, like grep."""
        answer = {
            "resource_id": NODE_B,
            "found": False,
            "value": None,
            "stored_at": NODE_C,
            "route": [],
            "hops": 0,
        }
        status, out, _ = self.run_cli("get", "bob", answers=(answer,))
        self.assertEqual(status, 1)
        self.assertIn("bob: not found", out)

    def test_lookup(self) -> None:
        """lookup prints the responsible node and the route."""
        answer = {
            "resource_id": NODE_B,
            "responsible": NODE_C,
            "route": [NODE_A, NODE_C],
            "hops": 2,
        }
        status, out, _ = self.run_cli("lookup", "bob", answers=(answer,))
        self.assertEqual(status, 0)
        self.assertIn(f"responsible: {NODE_C}", out)
        self.assertIn("(2 hops)", out)
        self.assertEqual(
            self.opener.requests[0].full_url, "http://127.0.0.1:8084/api/lookup?name=bob"
        )

    def test_connection_refused(self) -> None:
        """An unreachable API names the URL and asks whether the role and --http are right."""
        refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
        status, out, err = self.run_cli("status", answers=(refused,))
        self.assertEqual((status, out), (1, ""))
        self.assertIn(
            "cannot reach the admin API at http://127.0.0.1:8084: is the role running? "
            "is --http set to that address?",
            err,
        )

    def test_timeout(self) -> None:
        """A request that times out says so and points at the role's log."""
        status, _, err = self.run_cli("status", answers=(TimeoutError("timed out"),))
        self.assertEqual(status, 1)
        self.assertIn("no answer from http://127.0.0.1:8084/status within 30 seconds", err)

    def test_http_error_shows_json_error(self) -> None:
        """An HTTP error prints the API's JSON error message and exits 1."""
        error = http_error(503, b'{"error": "the node has not joined the ring yet"}', "Unavailable")
        status, _, err = self.run_cli("lookup", "bob", answers=(error,))
        self.assertEqual(status, 1)
        self.assertIn("answered 503: the node has not joined the ring yet", err)

    def test_http_error_without_json(self) -> None:
        """An HTTP error whose body is not our JSON falls back to the reason phrase."""
        status, _, err = self.run_cli("status", answers=(http_error(404, b"<html>", "Not Found"),))
        self.assertEqual(status, 1)
        self.assertIn("answered 404: Not Found", err)

    def test_answer_not_json(self) -> None:
        """An answer that is not JSON suggests --api points at the wrong thing."""
        status, _, err = self.run_cli("status", answers=(b"<html>hello</html>",))
        self.assertEqual(status, 1)
        self.assertIn("did not answer JSON; is --api pointing at a p2psip role", err)

    def test_answer_json_but_not_object(self) -> None:
        """A JSON answer that is not an object is an error, not a crash."""
        status, _, err = self.run_cli("ring", answers=(b"[1, 2]",))
        self.assertEqual(status, 1)
        self.assertIn("not an object", err)

    def test_bad_api_url(self) -> None:
        """An --api that is not an http URL is refused with an example."""
        status, _, err = self.run_cli("--api", "127.0.0.1:8084", "status")
        self.assertEqual(status, 1)
        self.assertIn("--api must be an http:// URL such as http://127.0.0.1:8084", err)

    def test_api_after_subcommand(self) -> None:
        """--api may also follow the subcommand."""
        self.run_cli("status", "--api", "http://127.0.0.1:9999", answers=({},))
        self.assertEqual(self.opener.requests[0].full_url, "http://127.0.0.1:9999/status")

    def test_api_from_environment(self) -> None:
        """$P2PSIP_API sets the default --api."""
        self.patch(os, "environ", dict(os.environ, P2PSIP_API="http://127.0.0.1:7777"))
        self.assertEqual(build_parser().parse_args(["status"]).api, "http://127.0.0.1:7777")

    def test_control_characters_are_escaped(self) -> None:
        """Text chosen by other peers cannot send escape sequences to the terminal."""
        answer = {"nodes": [{"node_id": NODE_A, "address": "\x1b[2Jevil\r\n"}], "complete": True}
        _, out, _ = self.run_cli("ring", answers=(answer,))
        self.assertNotIn("\x1b", out)
        self.assertIn("\\x1b[2Jevil\\r\\n", out)

    def test_no_command_prints_help(self) -> None:
        """Without a subcommand the tool prints help and exits 2."""
        self.patch(sys, "stderr", io.StringIO())
        self.assertEqual(main([]), 2)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=10,
)
# Recursive JSON is slow to generate on a loaded machine (make test runs jobs
# in parallel); the test is about the formatter, not generation speed.
json_settings = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


class TokenTests(CommandTestsMixin, SynchronousTestCase):
    """The admin token: where the command finds it, and what it says when it cannot."""

    def authorization(self, index: int = 0) -> str | None:
        return self.opener.requests[index].get_header("Authorization")

    def test_api_calls_send_the_token(self) -> None:
        """put, get and lookup send the token from the data directory as a Bearer token."""
        self.run_cli("put", "alice", "v", answers=({},))
        self.run_cli("get", "alice", answers=({"found": False},))
        self.run_cli("lookup", "alice", answers=({},))
        self.assertEqual(self.authorization(), f"Bearer {TOKEN}")
        self.assertEqual(len(self.opener.requests), 1)

    def test_status_and_ring_need_no_token(self) -> None:
        """status and ring are open routes: no token is read or sent."""
        self.data_dir = self.mktemp()  # no token file there
        for command in ("status", "ring"):
            status, _, err = self.run_cli(command, answers=({},))
            self.assertEqual((status, err), (0, ""))
            self.assertIsNone(self.authorization())

    def test_data_dir_option(self) -> None:
        """--data-dir, before or after the subcommand, wins over $P2PSIP_DATA_DIR."""
        other = self.mktemp()
        write_token(other, "o" * 40)
        self.run_cli("--data-dir", other, "lookup", "x", answers=({},))
        self.assertEqual(self.authorization(), "Bearer " + "o" * 40)
        self.run_cli("lookup", "x", "--data-dir", other, answers=({},))
        self.assertEqual(self.authorization(), "Bearer " + "o" * 40)

    def test_token_file_option(self) -> None:
        """--token-file wins over --data-dir."""
        path = write_token(self.mktemp(), "f" * 50)
        self.run_cli(
            "--data-dir", self.mktemp(), "--token-file", str(path), "get", "x", answers=({},)
        )
        self.assertEqual(self.authorization(), "Bearer " + "f" * 50)

    def test_missing_token_file(self) -> None:
        """No token file: no request is made, and the error names the file and both options."""
        missing = self.mktemp()
        status, out, err = self.run_cli("--data-dir", missing, "put", "a", "b")
        self.assertEqual((status, out, self.opener.requests), (1, "", []))
        self.assertIn(f"no admin token file {Path(missing, 'admin-token')}", err)
        self.assertIn("--data-dir", err)
        self.assertIn("--token-file", err)

    def test_token_file_open_to_everyone(self) -> None:
        """A world-readable token file is refused with the chmod that fixes it."""
        path = write_token(self.mktemp(), mode=0o644)
        status, _, err = self.run_cli("--token-file", str(path), "get", "x")
        self.assertEqual(status, 1)
        self.assertIn(f"chmod 600 {path}", err)

    def test_refused_token(self) -> None:
        """A 401 names the token file that was sent and the option to fix."""
        refused = http_error(401, b'{"error": "wrong admin token: use the one"}', "Unauthorized")
        status, _, err = self.run_cli("get", "x", answers=(refused,))
        self.assertEqual(status, 1)
        self.assertIn("answered 401: wrong admin token", err)
        self.assertIn(f"the token from {Path(self.data_dir, 'admin-token')}", err)
        self.assertIn("--data-dir of the role at http://127.0.0.1:8084", err)

    def test_no_token_known(self) -> None:
        """For an address that is no role's default, without --data-dir, the error says what to give."""
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "P2PSIP_DATA_DIR"})
        client = admin.AdminClient(
            "http://127.0.0.1:9999",
            FakeOpener(),
            token_file=admin.default_token_file("http://127.0.0.1:9999"),
        )
        error = self.assertRaises(admin.AdminError, client.get, "x")
        self.assertIn("needs the role's token: give --data-dir DIR", str(error))

    def test_default_token_files(self) -> None:
        """The default follows the roles' defaults: port 8084 is the bootstrap, 8085 the peer."""
        default = admin.default_token_file
        self.assertEqual(
            default("http://127.0.0.1:8084"), Path("/var/lib/p2psip/bootstrap/admin-token")
        )
        self.assertEqual(
            default("http://localhost:8085/"), Path("/var/lib/p2psip/peer/admin-token")
        )
        self.assertIsNone(default("http://127.0.0.1:9000"))
        self.assertIsNone(default("http://192.0.2.1:8084"))
        self.assertIsNone(default("http://127.0.0.1:notaport"))
        self.assertEqual(default("http://127.0.0.1:9000", "/srv/p"), Path("/srv/p/admin-token"))
        self.assertEqual(default("http://127.0.0.1:8084", "/srv/p", "/t"), Path("/t"))


class FormatTests(SynchronousTestCase):
    @json_settings
    @given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
    def test_status_formats_any_document(self, status: dict[str, Any]) -> None:
        """Any JSON object formats without error and without control characters."""
        text = admin.format_status(status)
        self.assertFalse(any(ord(ch) < 0x20 and ch != "\n" for ch in text))

    @json_settings
    @given(
        st.dictionaries(
            st.sampled_from(
                ["nodes", "complete", "route", "hops", "found", "value", "replicas", "resource_id"]
            ),
            json_values,
        )
    )
    def test_other_formats_tolerate_any_answer(self, answer: dict[str, Any]) -> None:
        """The formatters accept any answer shape the API might send."""
        for format_answer in (admin.format_put, admin.format_get, admin.format_lookup):
            format_answer("name", answer)
        admin.format_ring(answer)
