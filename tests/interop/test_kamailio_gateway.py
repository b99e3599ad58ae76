"""
The gateway against a real conventional SIP domain: Kamailio serves
``kam.test`` on loopback (``tests/interop/gateway/kamailio.cfg``), a
``twisted.names`` server in the test answers its NAPTR, SRV and A records,
and two super-nodes of one in-memory DHT serve ``overlay.test``; super-node
A federates with ``kam.test`` (``--sip-peer-domain``) and asks the test's
DNS server (``--dns-servers``).

* a SIPp user registered at Kamailio calls an overlay user registered at
  super-node B: Kamailio sends it to A, A finds the user in the DHT and
  forwards to B (no Digest asked: A recognises Kamailio by the addresses
  kam.test's DNS records give); answered, ACK and BYE along the route set;
* an overlay user calls a Kamailio user: A challenges it (407), locates
  kam.test by RFC 3263 (NAPTR, SRV, A) and forwards; answered, ACK and
  BYE through A to Kamailio's Record-Route;
* a call from kam.test for a domain nobody routes is refused (403) by A.

Real processes on loopback ports the OS handed out, each ended at cleanup;
skipped without kamailio or sipp unless P2PSIP_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.names import dns
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService
from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, repository_root, require_tool
from tests.integration.test_peer_sip_service import start_super_nodes
from tests.interop.test_sip_tools import CollectingProcess, spawn_collecting
from tests.sip.dns_server import serve_zone

OVERLAY = "overlay.test"
KAM = "kam.test"
HERE = repository_root() / "tests" / "interop" / "gateway"
SIPP_SCENARIOS = repository_root() / "tests" / "integration" / "sipp"
CALLER_PASSWORD = "caller-secret"
CALLEE_PASSWORD = "callee-secret"


class _SipPing(DatagramProtocol):
    """Sends OPTIONS to a SIP server until it answers anything."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.answered: Deferred[None] = Deferred()
        self._count = 0

    def send(self) -> None:
        self._count += 1
        assert self.transport is not None
        local = self.transport.getHost().port
        self.transport.write(
            (
                f"OPTIONS sip:127.0.0.1:{self.target[1]} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bKping{self._count};rport\r\n"
                "From: <sip:ping@127.0.0.1>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
                f"Call-ID: ping-{local}\r\nCSeq: {self._count} OPTIONS\r\nMax-Forwards: 5\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            self.target,
        )

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if not self.answered.called and datagram.startswith(b"SIP/2.0 "):
            self.answered.callback(None)


class KamailioGatewayTests(TestCase):
    """Calls both ways between a Kamailio domain and the overlay, through the gateway."""

    timeout = 60

    def spawn(
        self, name: str, executable: str, arguments: list[str], stop_signal: str = "KILL"
    ) -> CollectingProcess:
        # Kamailio's workers share its output pipes: a TERM lets the main
        # process end them, where a KILL would leave them holding the pipes.
        protocol = spawn_collecting(
            self, executable, arguments, str(self.directory), stop_signal=stop_signal
        )
        self.processes[name] = protocol
        return protocol

    def callee(self, name: str, port: int) -> CollectingProcess:
        """A SIPp UAS on ``port`` answering one call (tests/integration/sipp/uas.xml)."""
        return self.spawn(
            name,
            self.sipp_path,
            [
                "-sf",
                str(SIPP_SCENARIOS / "uas.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(port),
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
            ],
        )

    def sipp(self, name: str, target: int, arguments: list[str]) -> CollectingProcess:
        return self.spawn(
            name,
            self.sipp_path,
            [
                f"127.0.0.1:{target}",
                *arguments,
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-nostdin",
                "-timeout",
                "20s",
                "-timeout_error",
            ],
        )

    @inlineCallbacks
    def succeeds(self, name: str, target: int, arguments: list[str]) -> Any:
        tool = self.sipp(name, target, arguments)
        code = yield tool.ended
        if code != 0:
            kamailio = self.processes["kamailio"].output.decode(errors="replace")
            self.fail(
                f"SIPp {name} exited {code}:\n{tool.output.decode(errors='replace')[-3000:]}\n"
                f"--- kamailio:\n{kamailio[-3000:]}"
            )

    def csv(self, name: str, *lines: str) -> str:
        path = self.directory / name
        path.write_text("SEQUENTIAL\n" + "".join(f"{line}\n" for line in lines), encoding="ascii")
        return str(path)

    @inlineCallbacks
    def start_kamailio(self, kamailio: str, port: int, overlay: SipService) -> Any:
        assert overlay.advertised is not None
        host, overlay_port = overlay.advertised
        config = self.directory / "kamailio.cfg"
        config.write_text(
            (HERE / "kamailio.cfg")
            .read_text(encoding="utf-8")
            .replace("@KAM_PORT@", str(port))
            .replace("@OVERLAY_HOP@", f"sip:{host}:{overlay_port}"),
            encoding="utf-8",
        )
        run = self.directory / "kamailio-run"
        run.mkdir()
        self.spawn(
            "kamailio",
            kamailio,
            ["-f", str(config), "-DD", "-E", "-n", "1", "-m", "32", "-M", "4", "-Y", str(run)],
            stop_signal="TERM",
        )
        ping = _SipPing(port)
        listening = reactor.listenUDP(0, ping, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        pinging = LoopingCall(ping.send)
        pinging.start(0.2)
        self.addCleanup(lambda: pinging.stop() if pinging.running else None)
        started = self.processes["kamailio"]

        def exited(code: int) -> int:
            if not ping.answered.called:
                output = started.output.decode(errors="replace")[-3000:]
                ping.answered.errback(AssertionError(f"kamailio exited {code}:\n{output}"))
            return code

        started.ended.addCallback(exited)
        yield ping.answered.addTimeout(15, reactor)
        pinging.stop()

    @inlineCallbacks
    def test_calls_cross_both_ways(self) -> Any:
        """Kamailio user calls overlay user, overlay user calls Kamailio user; an unknown domain is refused."""
        kamailio = require_tool("kamailio")
        self.sipp_path = require_tool("sipp")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.processes: dict[str, CollectingProcess] = {}
        users_path = self.directory / "users"
        users = UsersFile.load(users_path, missing_ok=True)
        users.set_password(f"sip:ocallee@{OVERLAY}", CALLEE_PASSWORD)
        users.set_password(f"sip:caller@{OVERLAY}", CALLER_PASSWORD)
        users.save()

        kam_port = free_port(socket.SOCK_DGRAM)
        dns_port, authority = serve_zone(
            self,
            reactor,
            {
                (KAM, dns.NAPTR): [
                    dns.Record_NAPTR(10, 10, b"s", b"SIP+D2U", b"", b"_sip._udp." + KAM.encode())
                ],
                (f"_sip._udp.{KAM}", dns.SRV): [
                    dns.Record_SRV(0, 0, kam_port, b"sip." + KAM.encode())
                ],
                (f"sip.{KAM}", dns.A): [dns.Record_A("127.0.0.1")],
            },
        )
        gateway_options = [
            "--sip-peer-domain",
            KAM,
            "--dns-servers",
            f"127.0.0.1:{dns_port}",
            "--sip-rate-limit",
            "0",
        ]
        a, b = start_super_nodes(
            self,
            self.directory,
            OVERLAY,
            users_path,
            {"a": gateway_options, "b": ["--sip-rate-limit", "0"]},
        )
        assert a.advertised is not None and b.advertised is not None
        yield self.start_kamailio(kamailio, kam_port, a)

        # Callees: ocallee of the overlay (registered at B with Digest) and kuser of kam.test.
        overlay_uas_port = free_port(socket.SOCK_DGRAM)
        overlay_callee = self.callee("overlay callee", overlay_uas_port)
        kam_uas_port = free_port(socket.SOCK_DGRAM)
        kam_callee = self.callee("kam callee", kam_uas_port)
        yield self.succeeds(
            "register at B",
            b.advertised[1],
            [
                "-sf",
                str(SIPP_SCENARIOS / "register_digest.xml"),
                "-inf",
                self.csv(
                    "overlay-register.csv",
                    f"ocallee;[authentication username=ocallee password={CALLEE_PASSWORD}]",
                ),
                "-auth_uri",
                OVERLAY,
                "-key",
                "domain",
                OVERLAY,
                "-key",
                "contact_port",
                str(overlay_uas_port),
                "-m",
                "1",
            ],
        )
        yield self.succeeds(
            "register at kamailio",
            kam_port,
            [
                "-sf",
                str(HERE / "register.xml"),
                "-inf",
                self.csv("kam-register.csv", "kuser"),
                "-key",
                "domain",
                KAM,
                "-key",
                "contact_port",
                str(kam_uas_port),
                "-m",
                "1",
            ],
        )

        # kam.test -> overlay: through Kamailio, A (the DHT lookup) and B.
        yield self.succeeds(
            "kam.test calls the overlay",
            kam_port,
            [
                "-sf",
                str(SIPP_SCENARIOS / "uac.xml"),
                "-inf",
                self.csv("overlay-callee.csv", "ocallee"),
                "-key",
                "domain",
                OVERLAY,
                "-key",
                "caller_domain",
                KAM,
                "-m",
                "1",
            ],
        )
        self.assertEqual((yield overlay_callee.ended), 0)

        # overlay -> kam.test: A challenges its user, then locates kam.test by DNS.
        yield self.succeeds(
            "the overlay calls kam.test",
            a.advertised[1],
            [
                "-sf",
                str(SIPP_SCENARIOS / "uac.xml"),
                "-inf",
                self.csv("kam-callee.csv", "kuser"),
                "-key",
                "domain",
                KAM,
                "-key",
                "caller_domain",
                OVERLAY,
                "-au",
                "caller",
                "-ap",
                CALLER_PASSWORD,
                "-auth_uri",
                f"kuser@{KAM}",
                "-m",
                "1",
            ],
        )
        self.assertEqual((yield kam_callee.ended), 0)

        # kam.test asks A for a domain nobody routes: refused, not relayed.
        yield self.succeeds(
            "kam.test calls an unknown domain",
            kam_port,
            [
                "-sf",
                str(HERE / "uac_refused.xml"),
                "-key",
                "callee",
                "someone",
                "-key",
                "domain",
                "unknown.test",
                "-key",
                "caller_domain",
                KAM,
                "-m",
                "1",
            ],
        )
        self.assertEqual(a.status()["gateway"]["peer_domains"], [KAM])
        invites = a.status()["final_responses"]["INVITE"]
        self.assertEqual(invites, {"200": 2, "403": 1, "407": 1})
        self.assertEqual(a.proxy.relay_refusals, 1)
        self.assertIn((KAM, dns.NAPTR), authority.queries)
