"""
An enrolled ring of ``twistd`` super-nodes on loopback where one Digest user,
alice, may register: the fixture the restart and SIP Outbound tests share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from p2psip.sip.users import UsersFile
from p2psip.testing import require_tool
from tests.integration import test_sip_overlay
from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for
from tests.integration.test_sip_overlay import free_udp_and_tcp_port


class AliceRingCase(TestCase):
    """Subclasses set ``domain`` and ``password``; ``start`` runs one role of the ring."""

    domain = ""
    password = ""

    # SIPp as the SIP-over-the-ring test runs it (on 127.0.0.1, in the test's
    # directory), with this test's domain.
    sipp_succeeds = test_sip_overlay.SipOverlayTests.sipp_succeeds

    def run_sipp(self, name: str, arguments: list[str]) -> Any:
        return test_sip_overlay.SipOverlayTests.run_sipp(
            self, name, [*arguments, "-key", "domain", self.domain]
        )

    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        self.tools: dict[str, Any] = {}
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.ca = OverlayCA(self.directory / "bootstrap", self.domain)
        self.users_path = self.directory / "users"
        users = UsersFile.load(self.users_path, missing_ok=True)
        users.set_password(f"sip:alice@{self.domain}", self.password)
        users.save()

    def start(self, role: str, name: str, extra: list[str]) -> RoleProcess:
        """``role`` enrolled as ``name``, with a SIP listener and alice's users file."""
        self.ca.enrol_offline(self.directory / name)
        self.ca.issue_user_certificates(self.directory / name, [f"alice@{self.domain}"])
        sip_port = free_udp_and_tcp_port()
        process = RoleProcess(
            role,
            self.directory / name,
            overlay_arguments(self.domain)
            + [
                *("--sip", f"udp:{sip_port}:interface=127.0.0.1"),
                *("--users", str(self.users_path), "--sip-digest-algorithms", "MD5"),
                *(self.ca.bootstrap_arguments() if role == "p2psip-bootstrap" else []),
                *extra,
            ],
        )
        process.sip_port = sip_port  # type: ignore[attr-defined]
        self.addCleanup(process.stop)
        return process

    def joined(self, process: RoleProcess) -> Any:
        """Fires once ``process`` reports itself joined."""
        return wait_for(
            lambda: process.call("status").addCallback(lambda s: s.get("state") == "joined"),
            60,
            f"{process.role} to join",
        )
