"""``--workers``: what each worker runs, and the options it refuses."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from p2psip.roles import bootstrap
from p2psip.roles.workers import WorkerSupervisor, shift_port
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

    def test_refused_forms(self) -> None:
        transport = SipTransport(reactor)  # type: ignore[arg-type]
        for description in ("udp:0", "ssl:5061", "tcp:0:interface=127.0.0.1"):
            failure = self.failureResultOf(transport.listen(description, shared=True), ValueError)
            self.assertIn("--sip", failure.getErrorMessage())
