"""
A role whose data directory cannot be used stops with one line naming the
path and the fix, never a traceback: a full disk (a small tmpfs mounted in
a mount namespace of the role's own, gone when it exits), a data
directory that is a file, a state database that is not one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

from tests.integration.processes import repository_root

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def role_command(data_dir: Path) -> list[str]:
    return [
        *TWISTD,
        "-n",
        "--pidfile=",
        "--logfile=-",
        "p2psip-bootstrap",
        "--insecure",
        *("--overlay", "tcp:0:interface=127.0.0.1"),
        *("--http", "tcp:0:interface=127.0.0.1"),
        *("--data-dir", str(data_dir)),
    ]


class DataDirectoryFaultTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)

    def run_role(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        environment = dict(os.environ, PYTHONPATH=str(repository_root()))
        return subprocess.run(
            command,
            cwd=self.directory,
            env=environment,
            capture_output=True,
            text=True,
            timeout=45,
        )

    def assertStoppedNaming(self, result: subprocess.CompletedProcess[str], path: Path) -> None:
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn(str(path), output)
        self.assertNotIn("Traceback", output)

    def test_full_disk(self) -> None:
        """On a full disk the role stops with the file it could not write and the hint."""
        unshare = shutil.which("unshare")
        if unshare is None or os.geteuid() != 0:
            raise SkipTest("needs unshare and root to mount a tmpfs in a mount namespace")
        data = self.directory / "data"
        data.mkdir()
        # The tmpfs lives in the role's own mount namespace: it goes when the role exits.
        script = (
            f'mount -t tmpfs -o size=128k tmpfs "{data}" || exit 77\n'
            f'dd if=/dev/zero of="{data}/filler" bs=4k 2>/dev/null\n'
            'exec "$@"\n'
        )
        result = self.run_role(
            [unshare, "-m", "sh", "-c", script, "sh", *role_command(data / "node")]
        )
        if result.returncode == 77:
            raise SkipTest(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.assertStoppedNaming(result, data / "node")
        self.assertIn("disk is not full", result.stderr)
        self.assertEqual(list(data.iterdir()), [], "the tmpfs stayed mounted")

    def test_data_directory_is_a_file(self) -> None:
        """A --data-dir that is a file is named, with the option to fix."""
        data = self.directory / "data"
        data.write_text("not a directory")
        result = self.run_role(role_command(data))
        self.assertStoppedNaming(result, data)
        self.assertIn("--data-dir", result.stderr)

    def test_state_database_is_not_one(self) -> None:
        """A damaged state database stops the role naming the file and how to start afresh."""
        data = self.directory / "data"
        data.mkdir(mode=0o700)
        (data / "state.sqlite3").write_bytes(b"not a database" * 1000)
        result = self.run_role(role_command(data))
        self.assertStoppedNaming(result, data / "state.sqlite3")
        self.assertIn("move the file away", result.stderr)
