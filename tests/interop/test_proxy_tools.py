"""
The registrar and proxy against real SIP tools on loopback: sipsak
registers with digest authentication, and a SIPp caller reaches a SIPp
callee through the proxy.

Real sockets (port 0 on 127.0.0.1, or ports the OS just handed out for the
tools' command lines) and real processes, each ended in the test's
cleanup; transaction and registration timers run on a fake clock so
nothing is left on the reactor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor, utils
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.internet import task
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2psip.sip.digest import DigestAuthenticator
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, parse_message
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, require_tool, shared_path, udp_port_bound
from tests.sip.memory_storage import MemoryOverlayStorage

NODE = 0x1111_2222_3333_4444_5555_6666_7777_8888
NOW = 1_764_000_000.0


@inlineCallbacks
def listening_proxy(
    test: TestCase,
    domain: str,
    storage: MemoryOverlayStorage,
    location: OverlayLocationService,
    registrar: Registrar,
    clock: Clock,
) -> Generator[Deferred[Any], Any, tuple[int, SipProxy]]:
    """A SipProxy for ``domain`` on a loopback UDP port (closed at cleanup); fires with both."""
    transport = SipTransport(reactor)
    port = yield transport.listen("udp:0:interface=127.0.0.1")
    test.addCleanup(transport.stop)
    number: int = port.getHost().port
    proxy = SipProxy(domain, ("127.0.0.1", number), storage, location, registrar, transport, clock)
    transport.receiver = proxy.transactions
    return number, proxy


class SipsakInteropTests(TestCase):
    """
    A real SIP client (sipsak) registers over loopback UDP.

    Real sockets (port 0 on 127.0.0.1) and a real process; timers run on a
    fake clock so nothing is left on the reactor.
    """

    @defer.inlineCallbacks
    def test_sipsak_registers_with_digest(self) -> Generator[Deferred[Any], Any, None]:
        """sipsak authenticates with MD5, gets its binding, and is refused with a wrong password."""
        sipsak = require_tool("sipsak")
        clock = Clock()
        clock.advance(NOW)
        directory = Path(self.mktemp())
        directory.mkdir()
        users = UsersFile(directory / "users")
        users.set_password("sip:alice@localhost", "wonderland")
        storage = MemoryOverlayStorage(NODE, clock)
        location = OverlayLocationService(storage, clock)
        # sipsak reads only the first challenge and knows only MD5.
        authenticator = DigestAuthenticator(
            "localhost", b"k" * 32, clock, users, algorithms=["MD5"]
        )
        registrar = Registrar("localhost", location, clock, authenticator, users)
        self.addCleanup(registrar.stop)
        number, _ = yield listening_proxy(self, "localhost", storage, location, registrar, clock)

        def run(password: str) -> Deferred[tuple[bytes, bytes, int]]:
            arguments = [
                "-U",
                "-C",
                "sip:alice@127.0.0.1:5999",
                "-x",
                "300",
                "-u",
                "alice",
                "-a",
                password,
                "-s",
                "sip:alice@localhost",
                "-p",
                "127.0.0.1",
                "-r",
                str(number),
            ]
            result: Deferred[tuple[bytes, bytes, int]] = utils.getProcessOutputAndValue(
                sipsak, arguments
            )
            return result

        _, _, good = yield run("wonderland")
        self.assertEqual(good, 0)
        [binding] = registrar.local_bindings("sip:alice@localhost")
        self.assertEqual(str(binding.contact.uri), "sip:alice@127.0.0.1:5999")
        self.assertEqual(binding.flow.host, "127.0.0.1")  # type: ignore[attr-defined]
        _, _, bad = yield run("guess")
        self.assertNotEqual(bad, 0)


class _Exited(ProcessProtocol):
    """Collects a child's output and fires ``ended`` with its exit code."""

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()
        self.output = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(-1 if code is None else int(code))


class SippCallInteropTests(TestCase):
    """
    One real call through the proxy on loopback: SIPp caller, SIPp callee.

    Uses the shared SIPp scenarios (INVITE, 200, ACK, pause, BYE, 200 with
    Record-Route); transaction timers run on a fake clock, so nothing is
    left on the reactor.
    """

    def spawn(self, sipp: str, arguments: list[str], directory: Path) -> _Exited:
        protocol = _Exited()
        process = reactor.spawnProcess(
            protocol, sipp, [sipp, *arguments], env=None, path=str(directory)
        )

        def stop() -> Deferred[int] | None:
            if protocol.ended.called:
                return None
            process.signalProcess("KILL")
            return protocol.ended

        self.addCleanup(stop)
        return protocol

    @inlineCallbacks
    def test_call_through_proxy(self) -> Generator[Deferred[Any], Any, None]:
        """A SIPp call to a registered callee completes through the proxy, ACK and BYE included."""
        sipp = require_tool("sipp")
        scenarios = shared_path("anchors")
        directory = Path(self.mktemp())
        directory.mkdir()
        clock = Clock()
        clock.advance(NOW)
        storage = MemoryOverlayStorage(NODE, clock)
        location = OverlayLocationService(storage, clock)
        registrar = Registrar("127.0.0.1", location, clock, trusted_network=True)
        self.addCleanup(registrar.stop)
        number, proxy = yield listening_proxy(
            self, "127.0.0.1", storage, location, registrar, clock
        )
        uas_port = free_port(socket.SOCK_DGRAM)
        uac_port = free_port(socket.SOCK_DGRAM)
        callee = self.spawn(
            sipp,
            [
                "-sf",
                str(scenarios / "uas.xml"),
                "-i",
                "127.0.0.1",
                "-p",
                str(uas_port),
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            directory,
        )
        # The proxy runs on a fake clock, so it retransmits nothing: an
        # INVITE sent before SIPp has bound its port would be lost for good.
        yield wait_until(lambda: udp_port_bound(uas_port), 20, "the SIPp callee to bind its port")
        registered = yield registrar.register_received(
            _register_for("callee0000", uas_port, uac_port), Hop("UDP", "127.0.0.1", uac_port)
        )
        self.assertEqual(registered.status, 200)
        caller = self.spawn(
            sipp,
            [
                f"127.0.0.1:{number}",
                "-sf",
                str(scenarios / "uac.xml"),
                "-inf",
                str(scenarios / "callees.csv"),
                "-i",
                "127.0.0.1",
                "-p",
                str(uac_port),
                "-m",
                "1",
                "-d",
                "100",
                "-nostdin",
                "-timeout",
                "30s",
            ],
            directory,
        )
        caller_status = yield caller.ended
        self.assertEqual(caller_status, 0, caller.output[-2000:].decode(errors="replace"))
        callee_status = yield callee.ended
        self.assertEqual(callee_status, 0, callee.output[-2000:].decode(errors="replace"))
        clock.advance(64)  # Timers L and J end the INVITE and BYE transactions
        self.assertEqual(proxy.pending_requests, 0)


@inlineCallbacks
def wait_until(
    condition: Callable[[], bool], seconds: float, what: str
) -> Generator[Deferred[Any], Any, None]:
    """Poll ``condition`` on the real clock (a process starting up) for up to ``seconds``."""
    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)


def _register_for(user: str, contact_port: int, source_port: int) -> Request:
    """A third-party style REGISTER for ``user@127.0.0.1`` with its contact on ``contact_port``."""
    request = parse_message(
        (
            "REGISTER sip:127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{source_port};branch=z9hG4bKreg{user}\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag=r1\r\nTo: <sip:{user}@127.0.0.1>\r\n"
            f"Call-ID: reg-{user}\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:{user}@127.0.0.1:{contact_port}>\r\nExpires: 3600\r\n\r\n"
        ).encode()
    )
    assert isinstance(request, Request)
    return request
