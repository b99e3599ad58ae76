"""coturn's turnutils_stunclient against our STUN UDP server on loopback."""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2psip.nat.stun_server import Address, StunReply, StunResponder, StunUdpService
from p2psip.testing import require_tool

REFLEXIVE = re.compile(rb"UDP reflexive addr: ([0-9.]+):(\d+)")
ORIGIN = re.compile(rb"Response origin: : ([0-9.]+):(\d+)")
OTHER = re.compile(rb"Other addr: : ([0-9.]+):(\d+)")
TOOL_TIMEOUT_SECONDS = 20


class RecordingResponder(StunResponder):
    """A responder that remembers which clients it answered."""

    def __init__(self) -> None:
        super().__init__()
        self.clients: list[Address] = []

    def answer_plain_binding(self, data: bytes, client: Address) -> bytes | None:
        self.clients.append(client)
        return super().answer_plain_binding(data, client)

    def answer_datagram(self, data: bytes, client: Address, local: Address) -> StunReply | None:
        self.clients.append(client)
        return super().answer_datagram(data, client, local)


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.outcome: tuple[bytes, int | None] | None = None
        self._waiting: list[Deferred[tuple[bytes, int | None]]] = []

    def wait(self) -> Deferred[tuple[bytes, int | None]]:
        """A Deferred for (output, exit code) once the process has ended."""
        if self.outcome is not None:
            return succeed(self.outcome)
        waiter: Deferred[tuple[bytes, int | None]] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self.outcome = (self.output, code)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(self.outcome)


class CoturnStunClientTests(TestCase):
    timeout = 60

    def run_tool(self, *args: str) -> Deferred[tuple[bytes, int | None]]:
        """Start turnutils_stunclient, killed by its pid at cleanup or after a time limit."""
        path = require_tool("turnutils_stunclient")
        collect = _Collect()
        process = reactor.spawnProcess(  # type: ignore[attr-defined]
            collect, path, [path, *args], env={}
        )

        def kill() -> None:
            try:
                process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        limit = reactor.callLater(TOOL_TIMEOUT_SECONDS, kill)  # type: ignore[attr-defined]

        def cleanup() -> Deferred[tuple[bytes, int | None]]:
            if limit.active():
                limit.cancel()
            kill()
            return collect.wait()

        self.addCleanup(cleanup)
        return collect.wait()

    def start_server(self, **kwargs: object) -> tuple[StunUdpService, RecordingResponder]:
        responder = RecordingResponder()
        service = StunUdpService(
            0, interface="127.0.0.1", responder=responder, reactor=reactor, **kwargs
        )  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        return service, responder

    async def test_reflexive_address(self) -> None:
        """turnutils_stunclient prints the mapped address our server saw it at."""
        service, responder = self.start_server()
        [(host, port)] = service.addresses()
        output, code = await self.run_tool("-p", str(port), host)
        self.assertEqual(code, 0, output)
        found = {(m[0].decode(), int(m[1])) for m in REFLEXIVE.findall(output)}
        self.assertEqual(len(found), 1, output)
        self.assertIn(found.pop(), responder.clients)

    async def test_rfc5780_mode(self) -> None:
        """In RFC 5780 mode (-f) the tool sees our other address and answers from it."""
        try:
            service, responder = self.start_server(alternate_ip="127.0.0.2", alternate_port=0)
        except OSError as e:
            self.skipTest(f"cannot bind 127.0.0.2 here: {e}")
        alternates = responder.alternates
        assert alternates is not None
        output, code = await self.run_tool("-f", "-p", str(alternates.primary_port), "127.0.0.1")
        self.assertEqual(code, 0, output)
        other = ("127.0.0.2", alternates.alternate_port)
        origins = {(m[0].decode(), int(m[1])) for m in ORIGIN.findall(output)}
        self.assertEqual(origins, {("127.0.0.1", alternates.primary_port), other}, output)
        self.assertIn((b"127.0.0.2", str(other[1]).encode()), OTHER.findall(output))
        reflexive = {(m[0].decode(), int(m[1])) for m in REFLEXIVE.findall(output)}
        self.assertTrue(reflexive and reflexive <= set(responder.clients), output)
