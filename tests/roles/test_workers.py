"""``--workers``: what each worker runs, and the options it refuses."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2psip.roles import bootstrap
from p2psip.roles.workers import WorkerSupervisor, shift_port
from p2psip.sip.message import AnyMessage, parse_message
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.testing import free_port
from tests.roles.test_peer import parse

WORKER_ARGS = (
    "--bootstrap",
    "tcp:127.0.0.1:6084",
    "--overlay",
    "tcp:6090:interface=127.0.0.1",
    "--http",
    "tcp:8090:interface=127.0.0.1",
    "--sip",
    "udp:5070:interface=127.0.0.1",
    "--sip",
    "tcp:5070:interface=127.0.0.1",
    "--sip-trusted-network",
    "--insecure",
    "--media-relay",
    "always",
    "--media-ports",
    "40000-40999",
    "--media-address",
    "127.0.0.1",
    "--workers",
    "2",
)


class WorkerConfigTests(SynchronousTestCase):
    def test_shift_port(self) -> None:
        self.assertEqual(
            shift_port("tcp:6085:interface=127.0.0.1", 2), "tcp:6087:interface=127.0.0.1"
        )
        self.assertEqual(shift_port("tcp:port=8085", 1), "tcp:port=8086")
        self.assertEqual(shift_port("tcp:0", 3), "tcp:0")
        self.assertRaises(usage.UsageError, shift_port, "unix:/run/p2psip.sock", 1)

    def test_each_worker_its_own_directory_ports_and_media_share(self) -> None:
        """Worker K: DATA_DIR/worker-K, overlay +K, http +1+K, shared SIP ports, 1/N of the relay ports."""
        configs = [
            parse(*WORKER_ARGS, "--data-dir", "/srv/peer", "--worker", str(k)).config
            for k in (0, 1)
        ]
        self.assertEqual(
            [c.data_dir for c in configs], [Path("/srv/peer/worker-0"), Path("/srv/peer/worker-1")]
        )
        self.assertEqual(
            [c.listen for c in configs],
            ["tcp:6090:interface=127.0.0.1", "tcp:6091:interface=127.0.0.1"],
        )
        self.assertEqual(
            [c.http for c in configs],
            ["tcp:8091:interface=127.0.0.1", "tcp:8092:interface=127.0.0.1"],
        )
        for config in configs:
            assert config.sip is not None and config.sip.media is not None
            self.assertTrue(config.sip.shared_ports)
            self.assertEqual(
                config.sip.listeners,
                ("udp:5070:interface=127.0.0.1", "tcp:5070:interface=127.0.0.1"),
            )
        shares = [(c.sip.media.low_port, c.sip.media.high_port) for c in configs]  # type: ignore[union-attr]
        self.assertEqual(shares, [(40000, 40499), (40500, 40999)])
        self.assertEqual([c.worker_index for c in configs], [0, 1])

    def test_supervisor_keeps_the_arguments(self) -> None:
        """The supervisor starts each worker as this role with the same arguments plus --worker K."""
        options = parse(*WORKER_ARGS, "--data-dir", "/srv/peer")
        self.assertEqual((options.config.workers, options.config.worker_index), (2, None))
        supervisor = WorkerSupervisor(
            options.config, options.arguments, reactor, executable="python"
        )  # type: ignore[arg-type]
        command = supervisor.command(1)
        self.assertEqual(
            command[:5],
            ["python", "-m", "twisted", "--log-file=/srv/peer/worker-1/twistd.log", "p2psip-peer"],
        )
        self.assertEqual(command[-2:], ["--worker", "1"])
        self.assertIn("--workers", command)

    def test_refusals_name_the_fix(self) -> None:
        """What N workers cannot share is refused at start, naming the option."""
        for extra, needle in [
            (("--overlay", "tcp:0"), "--overlay"),
            (("--http", "tcp:0:interface=127.0.0.1"), "--http"),
            (("--worker", "2"), "--worker 2"),
        ]:
            with self.assertRaises(usage.UsageError) as raised:
                parse(*WORKER_ARGS, "--data-dir", "/srv/peer", *extra)
            self.assertIn(needle, str(raised.exception))
        options = bootstrap.Options()
        with self.assertRaises(usage.UsageError) as raised:
            options.parseOptions(
                [
                    "--workers",
                    "2",
                    "--sip",
                    "udp:5070",
                    "--sip-trusted-network",
                    "--insecure",
                    "--data-dir",
                    "/srv/b",
                ]
            )
        self.assertIn("peers", str(raised.exception))


OPTIONS = (
    b"OPTIONS sip:bob@workers.test SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKw1;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@workers.test>;tag=a1\r\n"
    b"To: <sip:bob@workers.test>\r\n"
    b"Call-ID: w1@phone\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Content-Length: 0\r\n\r\n"
)


class SharedPortTests(TestCase):
    @inlineCallbacks
    def test_two_transports_share_a_port(self) -> None:
        """With shared=True two transports listen on one UDP and TCP port; without, the second fails."""
        port = free_port()
        transports = [SipTransport(reactor), SipTransport(reactor)]  # type: ignore[arg-type]
        for transport in transports:
            self.addCleanup(transport.stop)
            yield transport.listen(f"udp:{port}:interface=127.0.0.1", shared=True)
            yield transport.listen(f"tcp:{port}:interface=127.0.0.1", shared=True)
        self.assertEqual({t.local_hop("UDP").port for t in transports}, {port})  # type: ignore[union-attr]
        lone = SipTransport(reactor)  # type: ignore[arg-type]
        self.addCleanup(lone.stop)
        yield self.assertFailure(lone.listen(f"udp:{port}:interface=127.0.0.1"), ValueError)

    @inlineCallbacks
    def test_worker_sends_from_its_own_port(self) -> Any:
        """
        A worker sends UDP from its own port (a UA answering to the source
        reaches this worker), but from the shared port to an address that
        talks to the shared port (a phone, whose NAT expects that port).
        """
        shared_port = free_port(socket.SOCK_DGRAM)
        transport = SipTransport(reactor)  # type: ignore[arg-type]
        self.addCleanup(transport.stop)
        arrived: Deferred[None] = Deferred()

        class Receiver:
            def message_received(self, message: AnyMessage, source: Hop) -> None:
                arrived.callback(None)

            def refusing_new_requests(self) -> bool:
                return False

            def refusal_for(self, request: object, top_via: object) -> bytes | None:
                return None

        transport.receiver = Receiver()  # type: ignore[assignment]
        yield transport.listen(f"udp:{shared_port}:interface=127.0.0.1", shared=True)
        own = yield transport.listen("udp:0:interface=127.0.0.1", private=True)
        phone, stranger = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
        for sock in (phone, stranger):
            self.addCleanup(sock.close)
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
        phone.sendto(OPTIONS, ("127.0.0.1", shared_port))
        yield arrived
        request = parse_message(OPTIONS)
        for sock in (phone, stranger):
            transport.send_request(request, Hop("UDP", *sock.getsockname()), self.fail)  # type: ignore[arg-type]
        self.assertEqual(phone.recvfrom(4096)[1], ("127.0.0.1", shared_port))
        self.assertEqual(stranger.recvfrom(4096)[1], ("127.0.0.1", own.getHost().port))

    def test_refused_forms(self) -> None:
        transport = SipTransport(reactor)  # type: ignore[arg-type]
        for description in ("udp:0", "ssl:5061", "tcp:0:interface=127.0.0.1"):
            failure = self.failureResultOf(transport.listen(description, shared=True), ValueError)
            self.assertIn("--sip", failure.getErrorMessage())
