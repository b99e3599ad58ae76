"""
SIP over a ring of real ``twistd`` super-nodes, driven by SIPp.

Three super-nodes on loopback (a bootstrap and two peers, each with a SIP
UDP listener and the same users file made with ``p2psip users add``); C is
the one responsible for the most of the 100 AORs, A and B the others:
SIPp registers 100 users at A with Digest authentication, their contacts
pointing at a SIPp callee; a SIPp caller calls each of them through B
(INVITE, 200, ACK, BYE, 200), over UDP and some over TCP, from a caller
of another domain; a caller claiming a user of the domain from outside
the ring answers a 407 with Proxy-Authorization first; a call to a user
nobody knows gets 480, like an offline one.
Then C, which holds those registrations' DHT copy, is SIGKILLed, and
calls to exactly those users still succeed from the replicas.

With ``--sip-direct-contacts any`` (loopback phones), calls through B reach
phones registered at A without crossing A.
"""

from __future__ import annotations

import contextlib
import io
import signal
import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2psip.cli import main as p2psip_command
from p2psip.testing import free_port, repository_root, require_tool
from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for
from tests.integration.processes import ring_converged as converged

DOMAIN = "sipp.test"
USERS = 100
TCP_CALLS = 20
SCENARIOS = repository_root() / "tests" / "integration" / "sipp"
CALLER_PASSWORD = "caller-secret"
#: SIPp's credentials for the 407 a caller of our domain gets from outside
#: the ring (uac.xml, uac_not_found.xml).
CALLER_CREDENTIALS = ["-au", "caller", "-ap", CALLER_PASSWORD]
#: A caller from another domain, whom nobody challenges.
FOREIGN_CALLER = ["-key", "caller_domain", "elsewhere.test"]
AUTHENTICATED_CALLS = 5
#: Calls of the direct-call test (through one super-node).
DIRECT_CALLS = 20


class _Tool(ProcessProtocol):
    """Collects a child's output and fires ``ended`` with its exit code."""

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    def errReceived(self, data: bytes) -> None:
        self.output = (self.output + data)[-20000:]

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else int(code))


def free_udp_and_tcp_port() -> int:
    """A port number free for both UDP and TCP on 127.0.0.1 (SIP listens on both)."""
    while True:
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def user(index: int) -> str:
    return f"user{index:04d}"


class SipOverlayTests(TestCase):
    timeout = 180

    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.ca = OverlayCA(self.directory / "bootstrap", DOMAIN)

    def start(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        # Any of the three may end up serving the phones (A), so each is
        # enrolled with the user certificates of all the users beforehand.
        self.ca.enrol_offline(self.directory / name)
        self.ca.issue_user_certificates(
            self.directory / name, [f"{user(index)}@{DOMAIN}" for index in range(USERS)]
        )
        sip_port = free_udp_and_tcp_port()
        process = RoleProcess(
            role,
            self.directory / name,
            overlay_arguments(DOMAIN)
            + [
                "--sip",
                f"udp:{sip_port}:interface=127.0.0.1",
                "--sip",
                f"tcp:{sip_port}:interface=127.0.0.1",
                "--users",
                str(self.users_path),
                # SIPp computes only MD5 digests.
                "--sip-digest-algorithms",
                "MD5",
                # One SIPp registers and calls at 100 a second from one address.
                "--sip-rate-limit",
                "0",
                *(self.ca.bootstrap_arguments() if role == "p2psip-bootstrap" else []),
                *extra,
            ],
        )
        process.sip_port = sip_port  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        return process

    def run_sipp(self, name: str, arguments: list[str]) -> _Tool:
        tool = _Tool()
        argv = [
            self.sipp,
            *arguments,
            "-i",
            "127.0.0.1",
            "-nostdin",
            "-timeout",
            "60s",
            "-key",
            "domain",
            DOMAIN,
        ]
        handle = reactor.spawnProcess(tool, self.sipp, argv, env=None, path=str(self.directory))

        def stop() -> Deferred[int] | None:
            if tool.ended.called:
                return None
            handle.signalProcess("KILL")
            return tool.ended

        self.addCleanup(stop)
        self.tools[name] = tool
        return tool

    @inlineCallbacks
    def sipp_succeeds(self, name: str, arguments: list[str], logs: list[RoleProcess]) -> Any:
        tool = self.run_sipp(name, arguments)
        code = yield tool.ended
        if code != 0:
            details = "\n".join(f"--- {p.role} log tail:\n{p.log_text()[-3000:]}" for p in logs)
            self.fail(
                f"SIPp {name} exited {code}:\n{tool.output[-3000:].decode(errors='replace')}\n{details}"
            )

    def write_csv(self, name: str, lines: list[str]) -> Path:
        path = self.directory / name
        path.write_text("SEQUENTIAL\n" + "".join(line + "\n" for line in lines), encoding="ascii")
        return path

    def make_users(self) -> list[str]:
        """The users file (USERS callees and the caller); SIPp's credentials lines."""
        self.tools: dict[str, _Tool] = {}
        self.users_path = self.directory / "users"
        credentials = []
        with contextlib.redirect_stdout(io.StringIO()):
            for index in range(USERS):
                password = f"secret-{index}"
                status = p2psip_command(
                    [
                        "users",
                        "add",
                        "--file",
                        str(self.users_path),
                        "--password",
                        password,
                        f"sip:{user(index)}@{DOMAIN}",
                    ]
                )
                self.assertEqual(status, 0)
                credentials.append(
                    f"{user(index)};[authentication username={user(index)} password={password}]"
                )
            # The caller: a user of the domain calling from outside the ring,
            # so the super-node SIPp calls through challenges it (407).
            status = p2psip_command(
                [
                    "users",
                    "add",
                    "--file",
                    str(self.users_path),
                    "--password",
                    CALLER_PASSWORD,
                    f"sip:caller@{DOMAIN}",
                ]
            )
            self.assertEqual(status, 0)
        return credentials

    @inlineCallbacks
    def test_register_call_and_survive_holder_kill(self) -> Any:
        """100 users register at A with Digest and are called through B, also after their DHT holder dies."""
        credentials = self.make_users()
        register_csv = self.write_csv("register.csv", credentials)
        callees_csv = self.write_csv("callees.csv", [user(index) for index in range(USERS)])

        bootstrap = self.start("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        peers = [
            self.start("p2psip-peer", f"peer{index}", ["--bootstrap", bootstrap.endpoint])
            for index in (1, 2)
        ]
        everyone = [bootstrap, *peers]
        for process in peers:
            yield wait_for(
                lambda p=process: p.call("status").addCallback(
                    lambda s: s.get("state") == "joined"
                ),
                60,
                "a peer to join",
            )
        yield wait_for(
            lambda: converged(everyone), 60, "the three super-nodes to know their neighbours"
        )

        # The node responsible for the most AORs is C, the one to kill; the
        # other two serve the phones (A) and take the calls (B).
        responsible: dict[str, list[str]] = {}
        for index in range(USERS):
            answer = yield bootstrap.call("lookup", f"sip:{user(index)}@{DOMAIN}")
            responsible.setdefault(answer["responsible"], []).append(user(index))
        node_ids = []
        for process in everyone:
            node_ids.append((yield process.call("status"))["node_id"])
        ranked = sorted(
            zip(node_ids, everyone), key=lambda pair: -len(responsible.get(pair[0], []))
        )
        (holder_id, holder), (_, serving), (_, entry) = ranked
        held = responsible[holder_id]

        uas_port = free_port(socket.SOCK_DGRAM)
        self.run_sipp("uas", ["-sf", str(SCENARIOS / "uas.xml"), "-p", str(uas_port)])
        yield self.sipp_succeeds(
            "register",
            [
                f"127.0.0.1:{serving.sip_port}",
                "-sf",
                str(SCENARIOS / "register_digest.xml"),  # type: ignore[attr-defined]
                "-inf",
                str(register_csv),
                "-auth_uri",
                DOMAIN,
                "-key",
                "contact_port",
                str(uas_port),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(USERS),
                "-r",
                "100",
                "-l",
                "50",
            ],
            [serving],
        )
        status = yield serving.call("status")
        self.assertEqual(status["sip"]["registrations"], {"aors": USERS, "bindings": USERS})
        self.assertEqual(status["sip"]["final_responses"]["REGISTER"], {"200": USERS, "401": USERS})

        yield self.sipp_succeeds(
            "calls",
            [
                f"127.0.0.1:{entry.sip_port}",
                "-sf",
                str(SCENARIOS / "uac.xml"),  # type: ignore[attr-defined]
                *FOREIGN_CALLER,
                "-inf",
                str(callees_csv),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(USERS),
                "-r",
                "50",
                "-l",
                "50",
            ],
            [entry, serving],
        )
        yield self.sipp_succeeds(
            "calls over TCP",
            [
                f"127.0.0.1:{entry.sip_port}",
                "-t",
                "t1",
                "-sf",
                str(SCENARIOS / "uac.xml"),  # type: ignore[attr-defined]
                *FOREIGN_CALLER,
                "-inf",
                str(callees_csv),
                "-p",
                str(free_udp_and_tcp_port()),
                "-m",
                str(TCP_CALLS),
                "-r",
                "50",
                "-l",
                "50",
            ],
            [entry, serving],
        )
        yield self.sipp_succeeds(
            "calls from a user of the domain, with Proxy-Authorization",
            [
                f"127.0.0.1:{entry.sip_port}",
                "-sf",
                str(SCENARIOS / "uac.xml"),  # type: ignore[attr-defined]
                "-inf",
                str(self.write_csv("one_callee.csv", [user(0)])),
                "-key",
                "caller_domain",
                DOMAIN,
                *CALLER_CREDENTIALS,
                "-auth_uri",
                f"{user(0)}@{DOMAIN}",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(AUTHENTICATED_CALLS),
                "-r",
                "50",
            ],
            [entry, serving],
        )
        yield self.sipp_succeeds(
            "unknown user",
            [
                f"127.0.0.1:{entry.sip_port}",
                "-sf",
                str(SCENARIOS / "uac_not_found.xml"),  # type: ignore[attr-defined]
                *CALLER_CREDENTIALS,
                "-auth_uri",
                f"nobody@{DOMAIN}",
                "-key",
                "callee",
                "nobody",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                "1",
            ],
            [entry],
        )
        status = yield entry.call("status")
        self.assertEqual(
            status["sip"]["final_responses"]["INVITE"],
            {
                "200": USERS + TCP_CALLS + AUTHENTICATED_CALLS,
                "407": AUTHENTICATED_CALLS + 1,
                "480": 1,
            },
        )

        for name in held:
            answer = yield entry.call("lookup", f"sip:{name}@{DOMAIN}")
            self.assertEqual(answer["responsible"], holder_id)

        holder.kill(signal.SIGKILL)
        holder.wait_exit()
        yield wait_for(
            lambda: converged([serving, entry]), 60, "A and B to repair the ring without C"
        )
        yield self.sipp_succeeds(
            "calls after SIGKILL",
            [
                f"127.0.0.1:{entry.sip_port}",
                "-sf",
                str(SCENARIOS / "uac.xml"),  # type: ignore[attr-defined]
                *FOREIGN_CALLER,
                "-inf",
                str(self.write_csv("held.csv", held)),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(len(held)),
                "-r",
                "50",
                "-l",
                "50",
            ],
            [entry, serving],
        )
        for process in (serving, entry):
            self.assertNotIn("Traceback", process.log_text())

    @inlineCallbacks
    def test_direct_calls_cross_one_super_node(self) -> Any:
        """
        With ``--sip-direct-contacts any`` a call to a phone that registered
        from its own address goes from the caller's super-node straight to
        it: the phones' super-node sees the REGISTERs and none of the calls.
        """
        credentials = self.make_users()[:DIRECT_CALLS]
        direct = ["--sip-direct-contacts", "any"]
        serving = self.start("p2psip-bootstrap", "bootstrap", direct)
        yield wait_for(
            lambda: serving.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        entry = self.start("p2psip-peer", "peer1", ["--bootstrap", serving.endpoint, *direct])
        yield wait_for(
            lambda: converged([serving, entry]), 60, "the two super-nodes to know each other"
        )
        uas_port = free_port(socket.SOCK_DGRAM)
        self.run_sipp("uas", ["-sf", str(SCENARIOS / "uas.xml"), "-p", str(uas_port)])
        yield self.sipp_succeeds(
            "register",
            [
                f"127.0.0.1:{serving.sip_port}",  # type: ignore[attr-defined]
                "-sf",
                str(SCENARIOS / "register_digest.xml"),
                "-inf",
                str(self.write_csv("register.csv", credentials)),
                "-auth_uri",
                DOMAIN,
                "-key",
                "contact_port",
                str(uas_port),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(DIRECT_CALLS),
                "-r",
                "50",
            ],
            [serving],
        )
        yield self.sipp_succeeds(
            "calls",
            [
                f"127.0.0.1:{entry.sip_port}",  # type: ignore[attr-defined]
                "-sf",
                str(SCENARIOS / "uac.xml"),
                *FOREIGN_CALLER,
                "-inf",
                str(self.write_csv("callees.csv", [user(i) for i in range(DIRECT_CALLS)])),
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-m",
                str(DIRECT_CALLS),
                "-r",
                "50",
            ],
            [entry, serving],
        )
        entry_status = yield entry.call("status")
        self.assertEqual(entry_status["sip"]["final_responses"]["INVITE"], {"200": DIRECT_CALLS})
        serving_status = yield serving.call("status")
        self.assertEqual(
            serving_status["sip"]["final_responses"],
            {"REGISTER": {"200": DIRECT_CALLS, "401": DIRECT_CALLS}},
        )
        for process in (serving, entry):
            self.assertNotIn("Traceback", process.log_text())
