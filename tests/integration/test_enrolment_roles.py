"""
The ring roles' enrolment, in process on loopback: a bootstrap built from
its twistd options serves enrolment over HTTPS, and a peer built from its
options with --enrol-url enrols on start, writes its files and joins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import TestCase

from p2psip.enrolment.accounts import AccountsFile, Grant, accounts_path
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.enrolment.node_files import read_root
from p2psip.overlay.certificates import OverlayRootTrust
from p2psip.overlay.identity import NodeIdentity
from p2psip.roles import bootstrap, peer
from p2psip.roles.enrolment_service import FirstEnrolment
from p2psip.roles.super_node import RingRole
from p2psip.testing import free_port
from p2psip.util.reactor import as_role_reactor

OVERLAY = "roles.enrol.test"
LOOPBACK = ["--overlay", "tcp:0:interface=127.0.0.1", "--http", "tcp:0:interface=127.0.0.1"]
FAST = ["--update-interval", "1", "--ping-interval", "1", "--request-timeout", "3"]
ROLE_REACTOR = as_role_reactor(reactor)


class EnrolOnStartTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        options = bootstrap.Options()
        options.parseOptions(
            [
                "--overlay-name",
                OVERLAY,
                "--data-dir",
                str(self.base / "bootstrap"),
                "--enrol-listen",
                f"ssl:{free_port()}:interface=127.0.0.1",
                *LOOPBACK,
                *FAST,
            ]
        )
        role = bootstrap.makeService(options, ROLE_REACTOR)
        assert isinstance(role, RingRole) and role.enrolment is not None
        self.bootstrap = role
        role.startService()
        self.addCleanup(role.stopService)
        accounts = AccountsFile.load(accounts_path(self.base / "bootstrap"), missing_ok=True)
        accounts.set_account("ops@roles.enrol.test", "right", [Grant.PEER])
        accounts.save()
        self.password = self.base / "password"
        self.password.write_text("right\n")

    def peer_service(self, name: str, password: str = "right", url: str | None = None) -> Any:
        self.password.write_text(password + "\n")
        assert self.bootstrap.enrolment is not None and self.bootstrap.overlay is not None
        port = self.bootstrap.overlay.port
        assert port is not None
        options = peer.Options()
        options.parseOptions(
            [
                "--overlay-name",
                OVERLAY,
                "--data-dir",
                str(self.base / name),
                "--bootstrap",
                f"tcp:127.0.0.1:{port.getHost().port}",  # type: ignore[attr-defined]
                "--enrol-url",
                url or str(self.bootstrap.enrolment.url),
                "--enrol-user",
                "ops@roles.enrol.test",
                "--enrol-password-file",
                str(self.password),
                "--ca-fingerprint",
                str(self.bootstrap.enrolment.fingerprint),
                *LOOPBACK,
                *FAST,
            ]
        )
        return peer.makeService(options, ROLE_REACTOR)

    async def test_enrols_and_joins(self) -> None:
        """A peer with no certificate enrols on start, writes its files, becomes a ring role and joins."""
        service = self.peer_service("peer")
        self.assertIsInstance(service, FirstEnrolment)
        service.startService()
        self.addCleanup(service.stopService)
        role = await service.ready
        assert isinstance(role, RingRole) and role.overlay is not None
        await role.overlay.joined
        directory = self.base / "peer"
        identity = NodeIdentity.load(directory)
        self.assertEqual(role.node.node_id, identity.node_id)
        self.assertEqual(identity.user_name, "ops@roles.enrol.test")
        trust = role.node.certificates.trust
        assert isinstance(trust, OverlayRootTrust)
        self.assertEqual(read_root(directory / "overlay-root.pem"), trust.root_der)
        self.assertEqual(
            root_fingerprint(trust.root_der),
            self.bootstrap.enrolment.fingerprint,  # type: ignore[union-attr]
        )
        self.assertTrue((directory / "overlay-config.xml").read_bytes().startswith(b"<?xml"))
        self.assertEqual(role.status()["security"]["mode"], "enrolled")
        # Started again, it needs no enrolment: its certificate is there.
        self.assertIsInstance(self.peer_service("peer", password="wrong"), RingRole)

    async def test_wrong_password_gives_up(self) -> None:
        """A refused enrolment is logged critical and the process gives up, naming the options."""
        service = self.peer_service("refused", password="wrong")
        gave_up: Deferred[None] = Deferred()
        service.give_up = lambda: gave_up.callback(None)
        with capturedLogs() as events:
            service.startService()
            self.addCleanup(service.stopService)
            await gave_up
        [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertIn("403", critical["why"])
        self.assertIn("--enrol-password-file", critical["log_format"])
        self.assertIsNone(service.role)
        self.assertFalse((self.base / "refused" / "node-cert.pem").exists())

    async def test_retries_until_reachable(self) -> None:
        """An enrolment server that is not up yet is tried again until it answers."""
        assert self.bootstrap.enrolment is not None
        url = str(self.bootstrap.enrolment.url)
        await self.bootstrap.enrolment.stopService()
        service = self.peer_service("patient", url=url)
        service.retry_seconds = 0.2
        with capturedLogs() as events:
            service.startService()
            self.addCleanup(service.stopService)
            await deferLater(reactor, 0.5, lambda: None)
            self.bootstrap.enrolment.startService()
            role = await service.ready
        assert isinstance(role, RingRole) and role.overlay is not None
        await role.overlay.joined
        warnings = [
            e
            for e in events
            if e["log_level"] == LogLevel.warn and "trying again" in e["log_format"]
        ]
        self.assertGreaterEqual(len(warnings), 1)
