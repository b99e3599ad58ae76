"""
twistd with ``--logger p2psip.util.log_files.bounded_observer`` under log
load: the log rotates at its size and keeps a bounded number of files, and
the role keeps answering meanwhile.

A bootstrap at ``--log-level debug`` logs a line per ``/status`` request;
the test asks for thousands of them with a 16 KiB limit and two old files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for

MAX_BYTES = 16 * 1024
KEEP = 2
#: Each logs a line of about 100 bytes: about four times what the files hold.
REQUESTS = 2000


class LogRotationTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_log_stays_bounded_under_load(self) -> Any:
        """After about 2000 logged requests the log is three files, none much above the limit."""
        directory = Path(self.mktemp()).resolve()
        ca = OverlayCA(directory / "bootstrap")
        logs = directory / "logs"
        logs.mkdir(parents=True)
        bootstrap = RoleProcess(
            "p2psip-bootstrap",
            directory / "bootstrap",
            [*overlay_arguments(), *ca.bootstrap_arguments(), "--log-level", "debug"],
            twistd_arguments=["--logger", "p2psip.util.log_files.bounded_observer"],
            environment={
                "P2PSIP_LOG_FILE": str(logs / "bootstrap.log"),
                "P2PSIP_LOG_MAX_BYTES": str(MAX_BYTES),
                "P2PSIP_LOG_KEEP": str(KEEP),
            },
        )
        self.addCleanup(bootstrap.stop)
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        yield deferToThread(lambda: [bootstrap.api.status() for _ in range(REQUESTS)])
        names = sorted(path.name for path in logs.iterdir())
        self.assertEqual(names, ["bootstrap.log", "bootstrap.log.1", "bootstrap.log.2"])
        for path in logs.iterdir():
            self.assertLessEqual(path.stat().st_size, MAX_BYTES + 4096)
        self.assertFalse((directory / "bootstrap" / "twistd.log").exists())
        status = yield bootstrap.call("status")
        self.assertEqual(status["state"], "alone")
