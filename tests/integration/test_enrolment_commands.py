"""
The operator's path to a secure ring, with the real commands: a ``twistd``
bootstrap makes its CA, ``p2psip accounts add`` adds an account while it
runs, ``p2psip ca fingerprint`` prints the pin, ``p2psip enrol`` enrols a
super-node and then a user certificate bound to it, and the enrolled peer
joins the bootstrap's ring.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from p2psip.enrolment.node_files import load_key
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.overlay.identity import NodeIdentity
from p2psip.testing import free_port, repository_root
from tests.integration.processes import RoleProcess, overlay_arguments, wait_for

OVERLAY = "commands.test"


class EnrolmentCommandTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.password = self.directory / "password"
        self.password.write_text("operator-password\n")

    @inlineCallbacks
    def p2psip(self, *argv: str) -> Any:
        """Run the p2psip command; (exit status, standard output, standard error)."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-c", "import sys; from p2psip.cli import main; sys.exit(main())", *argv],
            env=dict(os.environ, PYTHONPATH=str(repository_root())),
            path=str(self.directory),
        )
        return code, out.decode(), err.decode()

    @inlineCallbacks
    def test_operator_path(self) -> Any:
        """accounts add, ca fingerprint, enrol and enrol --user, then the peer joins with what they wrote."""
        enrol_port = free_port()
        bootstrap = RoleProcess(
            "p2psip-bootstrap",
            self.directory / "bootstrap",
            overlay_arguments(OVERLAY)
            + ["--enrol-listen", f"ssl:{enrol_port}:interface=127.0.0.1"],
        )
        self.addCleanup(bootstrap.stop)
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        bootstrap_data = bootstrap.directory / "data"
        code, out, err = yield self.p2psip(
            "accounts", "add", "--file", str(bootstrap_data / "enrolment-accounts"),
            "--peer", "--password-file", str(self.password), "ops@commands.test",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        alice_password = self.directory / "alice-password"
        alice_password.write_text("alice-password\n")
        code, out, err = yield self.p2psip(
            "--data-dir", str(bootstrap_data), "accounts", "add", "--user",
            "--password-file", str(alice_password), "alice@commands.test",
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        code, fingerprint, err = yield self.p2psip(
            "ca", "fingerprint", "--data-dir", str(bootstrap_data)
        )
        self.assertEqual(code, 0, err)
        fingerprint = fingerprint.strip()
        self.assertIn(fingerprint, bootstrap.log_text())  # the bootstrap printed it at first start

        peer_directory = self.directory / "peer"
        peer_data = peer_directory / "data"
        url = f"https://127.0.0.1:{enrol_port}/enrol"
        wrong = self.directory / "wrong"
        wrong.write_text("guess\n")
        code, _, err = yield self.p2psip(
            "enrol", "--url", url, "--account", "ops@commands.test", "--ca-fingerprint",
            fingerprint, "--password-file", str(wrong), "--data-dir", str(peer_data),
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("403", err)
        code, out, err = yield self.p2psip(
            "enrol", "--url", url, "--account", "ops@commands.test", "--ca-fingerprint",
            fingerprint, "--password-file", str(self.password), "--data-dir", str(peer_data),
            "--overlay-name", OVERLAY,
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        node = NodeIdentity.load(peer_data)
        self.assertIn(f"as node {node.node_id:032x}", out)
        self.assertEqual(os.stat(peer_data / "node-key.pem").st_mode & 0o777, 0o600)
        # Again: refused, since it would change the Node-ID.
        code, _, err = yield self.p2psip(
            "enrol", "--url", url, "--account", "ops@commands.test",
            "--password-file", str(self.password), "--data-dir", str(peer_data),
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("already holds a certificate", err)

        # A user certificate for alice, bound to this super-node; pinned by overlay-root.pem now.
        code, out, err = yield self.p2psip(
            "enrol", "--url", url, "--user", "alice@commands.test",
            "--password-file", str(alice_password), "--data-dir", str(peer_data),
        )  # fmt: skip
        self.assertEqual(code, 0, err)
        [(user, der)] = UserCertificates(peer_data).load_all().items()
        key = load_key(peer_data)
        assert key is not None
        user_identity = NodeIdentity(key, der)
        self.assertEqual((user, user_identity.node_id), ("alice@commands.test", node.node_id))
        self.assertEqual(user_identity.user_name, "alice@commands.test")

        peer = RoleProcess(
            "p2psip-peer",
            peer_directory,
            overlay_arguments(OVERLAY) + ["--bootstrap", bootstrap.endpoint],
        )
        self.addCleanup(peer.stop)
        yield wait_for(
            lambda: peer.call("status").addCallback(lambda s: s.get("state") == "joined"),
            30,
            "the enrolled peer to join",
        )
        status = yield peer.call("status")
        self.assertEqual(status["node_id"], f"{node.node_id:032x}")
        self.assertEqual(status["security"]["overlay_root"], fingerprint)
