"""The SIP transport and transaction layers against real SIP tools (sipsak, SIPp) on loopback."""

from __future__ import annotations

import os
import socket

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from p2psip.sip.message import NameAddress, Request, Response, SipURI, make_request, make_response
from p2psip.sip.transaction import Hop, ServerTransaction, TransactionLayer
from p2psip.sip.transport import SipTransport
from p2psip.testing import free_port, require_tool


class CollectingProcess(ProcessProtocol):
    """Collects output and the exit code of an external tool."""

    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred[int] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        code = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        if reason.check(ProcessTerminated) and code is None:
            code = -1
        self.ended.callback(code if code is not None else -1)


def spawn_collecting(
    test: TestCase,
    executable: str,
    arguments: list[str],
    directory: str,
    env: dict[str, str] | None = None,
    stop_signal: str = "KILL",
) -> CollectingProcess:
    """
    Run ``executable`` with ``arguments`` in ``directory``, its output
    collected; at cleanup it is sent ``stop_signal`` if still running, and
    waited for.
    """
    protocol = CollectingProcess()
    process = reactor.spawnProcess(
        protocol, executable, [executable, *arguments], env=env, path=directory
    )

    def stop() -> defer.Deferred[int] | None:
        if protocol.ended.called:
            return None
        process.signalProcess(stop_signal)
        return protocol.ended

    test.addCleanup(stop)
    return protocol


class AnsweringUAS:
    """A minimal UAS: 200 to OPTIONS and BYE; 180 then 200 to INVITE (retransmitting it until the ACK)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def request_received(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        self.methods.append(request.method)
        if request.method == "INVITE":
            transaction.respond(make_response(request, 180, to_tag="uas"))
            ok = make_response(request, 200, to_tag="uas")
            ok.headers.add("Contact", "<sip:uas@127.0.0.1>")
            transaction.respond(ok)
        else:
            transaction.respond(make_response(request, 200, to_tag="uas"))

    def ack_received(self, request: Request, source: Hop) -> None:
        self.methods.append("ACK")

    def stray_response_received(self, response: Response, source: Hop) -> None:
        pass


class SipToolTests(TestCase):
    """Real SIP implementations talk to this stack."""

    timeout = 60

    @defer.inlineCallbacks
    def start_uas(
        self, *listen: str
    ) -> defer.Generator[defer.Deferred[object], object, AnsweringUAS]:
        transport = SipTransport(reactor)
        uas = AnsweringUAS()
        layer = TransactionLayer(transport, uas, reactor)
        transport.receiver = layer
        self.addCleanup(transport.stop)

        def cancel_timers() -> None:
            for transaction in list(layer.server_transactions.values()) + list(
                layer.client_transactions.values()
            ):
                transaction._terminate()

        self.addCleanup(cancel_timers)
        for description in listen:
            yield transport.listen(description)
        self.transport = transport
        return uas

    def run_tool(self, argv: list[str]) -> defer.Deferred[int]:
        process = CollectingProcess()
        handle = reactor.spawnProcess(process, argv[0], argv, env=os.environ.copy())

        def kill_if_running() -> defer.Deferred[int] | None:
            if handle.pid is not None:
                handle.signalProcess("KILL")
                return process.ended
            return None

        self.addCleanup(kill_if_running)
        self.process = process
        return process.ended

    @defer.inlineCallbacks
    def test_sipsak_options_udp_and_tcp(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """sipsak's OPTIONS gets a 200 over UDP and over TCP (sipsak exits 0 only on a 2xx)."""
        sipsak = require_tool("sipsak")
        uas = yield self.start_uas("udp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1")
        assert isinstance(uas, AnsweringUAS)
        for transport in ("udp", "tcp"):
            hop = self.transport.local_hop(transport.upper())
            assert hop is not None
            code = yield self.run_tool(
                [sipsak, "-vv", "-E", transport, "-s", f"sip:ping@127.0.0.1:{hop.port}"]
            )
            self.assertEqual(code, 0, self.process.output.decode(errors="replace"))
        self.assertEqual(uas.methods, ["OPTIONS", "OPTIONS"])

    @defer.inlineCallbacks
    def run_sipp_uac(self, transport: str) -> defer.Generator[defer.Deferred[object], object, None]:
        sipp = require_tool("sipp")
        uas = yield self.start_uas(f"{transport}:0:interface=127.0.0.1")
        assert isinstance(uas, AnsweringUAS)
        hop = self.transport.local_hop(transport.upper())
        assert hop is not None
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        code = yield self.run_tool(
            [
                sipp,
                "-sn",
                "uac",
                f"127.0.0.1:{hop.port}",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port(kind)),
                "-t",
                "u1" if transport == "udp" else "t1",
                "-m",
                "5",
                "-r",
                "10",
                "-d",
                "100",
                "-nostdin",
                "-timeout",
                "30",
                "-timeout_error",
                "-trace_err",
                "-error_file",
                self.mktemp(),
            ]
        )
        self.assertEqual(code, 0, self.process.output.decode(errors="replace")[-2000:])
        self.assertEqual([uas.methods.count(m) for m in ("INVITE", "ACK", "BYE")], [5, 5, 5])

    def test_sipp_uac_calls_udp(self) -> defer.Deferred[None]:
        """SIPp's built-in uac scenario completes 5 INVITE/ACK/BYE calls over UDP without failures."""
        return self.run_sipp_uac("udp")

    def test_sipp_uac_calls_tcp(self) -> defer.Deferred[None]:
        """The same 5 calls over one TCP connection."""
        return self.run_sipp_uac("tcp")

    @defer.inlineCallbacks
    def test_client_transactions_against_sipp_uas(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """An INVITE client transaction, the 2xx ACK and a BYE complete a call with SIPp's uas scenario."""
        sipp = require_tool("sipp")
        uas = yield self.start_uas("udp:0:interface=127.0.0.1")
        assert isinstance(uas, AnsweringUAS)
        sipp_port = free_port(socket.SOCK_DGRAM)
        ended = self.run_tool(
            [
                sipp,
                "-sn",
                "uas",
                "-i",
                "127.0.0.1",
                "-p",
                str(sipp_port),
                "-m",
                "1",
                "-nostdin",
                "-timeout",
                "30",
                "-timeout_error",
                "-trace_err",
                "-error_file",
                self.mktemp(),
            ]
        )
        target = Hop("UDP", "127.0.0.1", sipp_port)
        layer = self.transport.receiver
        assert isinstance(layer, TransactionLayer)
        alice = NameAddress(SipURI("127.0.0.1", "alice"), parameters={"tag": "a1"})
        bob_uri = SipURI("127.0.0.1", "service", port=sipp_port)
        bob = NameAddress(bob_uri)
        local = self.transport.local_hop("UDP")
        assert local is not None
        alice_contact = NameAddress(SipURI("127.0.0.1", "alice", port=local.port))

        def request(method: str, number: int, to: NameAddress, uri: SipURI) -> Request:
            return make_request(
                method,
                uri,
                via=self.transport.make_via("UDP"),
                from_=alice,
                to=to,
                call_id="interop-1@127.0.0.1",
                cseq_number=number,
                contact=alice_contact,
            )

        statuses: list[int] = []
        final: defer.Deferred[Response] = defer.Deferred()

        def on_response(response: Response) -> None:
            statuses.append(response.status)
            if response.status >= 200 and not final.called:
                final.callback(response)

        # SIPp may need a moment to bind: the INVITE is retransmitted (Timer A) until it answers.
        layer.send_request(request("INVITE", 1, bob, bob_uri), target, on_response)
        ok = yield final
        assert isinstance(ok, Response)
        self.assertEqual(ok.status, 200)
        remote = ok.to
        contact_uri = ok.contacts[0].uri
        assert isinstance(contact_uri, SipURI)
        layer.send_request(request("ACK", 1, remote, contact_uri), target, lambda response: None)
        bye_done: defer.Deferred[Response] = defer.Deferred()
        layer.send_request(
            request("BYE", 2, remote, contact_uri),
            target,
            lambda response: bye_done.callback(response) if response.status >= 200 else None,
        )
        bye = yield bye_done
        assert isinstance(bye, Response)
        self.assertEqual(bye.status, 200)
        code = yield ended
        self.assertEqual(code, 0, self.process.output.decode(errors="replace")[-2000:])
        self.assertIn(180, statuses)
