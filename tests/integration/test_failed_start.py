"""
A role that cannot work stops with a failure status its service manager
sees: an overlay port that is taken ends ``twistd`` and ``twist`` (the
launcher the systemd units use) with status 69 (EX_UNAVAILABLE) and the
critical line naming ``--overlay``, not the 0 of a clean stop, which
``Restart=on-failure`` would not retry and ``systemctl status`` would not
show as failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

from p2psip.util.reactor import CANNOT_WORK_STATUS
from tests.integration.processes import repository_root

LAUNCHERS = {
    "twistd": [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
    ],
    "twist": [
        sys.executable,
        "-c",
        "from twisted.application.twist._twist import Twist; Twist.main()",
        "--log-format=text",
    ],
}


class FailedStartTests(TestCase):
    timeout = 60

    def run_with_taken_overlay_port(self, launcher: str) -> subprocess.CompletedProcess[str]:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            *LAUNCHERS[launcher],
            "p2psip-bootstrap",
            "--insecure",
            *("--overlay", f"tcp:{port}:interface=127.0.0.1"),
            *("--http", "tcp:0:interface=127.0.0.1"),
            *("--data-dir", str(directory / "data")),
        ]
        return subprocess.run(
            command,
            cwd=directory,
            env=dict(os.environ, PYTHONPATH=str(repository_root())),
            capture_output=True,
            text=True,
            timeout=45,
        )

    def assertFailedNamingOverlay(self, result: subprocess.CompletedProcess[str]) -> None:
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, CANNOT_WORK_STATUS, output)
        self.assertIn("cannot listen for overlay links", output)
        self.assertIn("--overlay", output)
        self.assertNotIn("Traceback", output)

    def test_twistd(self) -> None:
        self.assertFailedNamingOverlay(self.run_with_taken_overlay_port("twistd"))

    def test_twist(self) -> None:
        self.assertFailedNamingOverlay(self.run_with_taken_overlay_port("twist"))
