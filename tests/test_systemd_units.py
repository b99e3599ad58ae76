"""
The systemd units in etc/systemd: one per role (and a template for several
super-nodes per host), each running the role under the unprivileged
``p2psip`` user with its state directory and the same hardening, and each
accepted by ``systemd-analyze verify`` (Debian ``systemd``).

``verify`` also checks that ExecStart's program exists, and the units name
``/opt/p2psip/bin/twist``, which a test machine has not.  So the test
verifies a copy whose ExecStart names this interpreter's ``twist`` instead,
and checks separately that that is the only line changed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import repository_root, require_tool, skip_or_fail

INSTALLED_TWIST = "/opt/p2psip/bin/twist"

#: Settings every unit must have, whatever its role.
HARDENING = {
    "User": "p2psip",
    "Group": "p2psip",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "CapabilityBoundingSet": "",
    "SystemCallFilter": "@system-service",
    "Restart": "always",
}


def unit_files() -> list[Path]:
    return sorted((repository_root() / "etc" / "systemd").glob("*.service"))


def settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def role_of(path: Path) -> str:
    """``peer`` for p2psip-peer.service and p2psip-peer@.service."""
    match = re.fullmatch(r"p2psip-([a-z]+)(@?)\.service", path.name)
    assert match is not None, path.name
    return match.group(1)


class UnitContentTests(SynchronousTestCase):
    def test_every_role_has_a_unit(self) -> None:
        """Each p2psip twistd plugin has a unit, and the peer a template too."""
        roles = {
            maker.tapname.removeprefix("p2psip-")
            for maker in getPlugins(IServiceMaker)
            if maker.tapname.startswith("p2psip-")
        }
        names = {path.name for path in unit_files()}
        self.assertEqual({role_of(path) for path in unit_files()}, roles)
        self.assertIn("p2psip-peer@.service", names)

    def test_units_run_the_role_unprivileged_and_hardened(self) -> None:
        """Every unit runs the installed twist with the role's config, as p2psip, hardened, with its state directory."""
        for path in unit_files():
            unit = settings(path)
            role = role_of(path)
            instance = "-%i" if "@" in path.name else ""
            with self.subTest(unit=path.name):
                [command] = unit["ExecStart"]
                expected = (
                    f"{INSTALLED_TWIST} --log-format=text p2psip-{role} "
                    f"--config /etc/p2psip/{role}{instance}.ini"
                )
                if instance:
                    expected += f" --data-dir /var/lib/p2psip/{role}{instance}"
                self.assertEqual(command, expected)
                self.assertEqual(unit["StateDirectory"], [f"p2psip/{role}{instance}"])
                self.assertEqual(unit["WorkingDirectory"], [f"/var/lib/p2psip/{role}{instance}"])
                for key, value in HARDENING.items():
                    self.assertEqual(unit.get(key), [value], key)
                self.assertIn("AF_INET", unit["RestrictAddressFamilies"][0].split())

    def test_ring_members_leave_before_they_are_killed(self) -> None:
        """The ring roles get time to send Leave and hand over their values on stop."""
        for path in unit_files():
            if role_of(path) in ("bootstrap", "peer"):
                self.assertEqual(settings(path).get("TimeoutStopSec"), ["60"], path.name)


class SystemdAnalyzeTests(SynchronousTestCase):
    def test_verify(self) -> None:
        """systemd-analyze verify accepts every unit (with ExecStart pointed at this twist) without a warning."""
        analyze = require_tool("systemd-analyze")
        twist = Path(sys.executable).parent / "twist"
        if not twist.exists():
            skip_or_fail(f"no twist beside {sys.executable} to stand in for {INSTALLED_TWIST}")
        directory = Path(self.mktemp())
        directory.mkdir()
        for path in unit_files():
            original = path.read_text(encoding="utf-8")
            copy = original.replace(INSTALLED_TWIST, str(twist))
            # Only ExecStart names the program: nothing else was changed.
            self.assertEqual(
                [a for a, b in zip(original.splitlines(), copy.splitlines()) if a != b],
                [line for line in original.splitlines() if line.startswith("ExecStart=")],
            )
            (directory / path.name).write_text(copy, encoding="utf-8")
        for path in unit_files():
            name = path.name.replace("@.", "@test.")
            with self.subTest(unit=name):
                done = subprocess.run(
                    [analyze, "verify", name],
                    cwd=directory,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                # Warnings ("Unknown key ..., ignoring") leave the exit status 0: refuse them too.
                complaints = [
                    line for line in (done.stdout + done.stderr).splitlines() if "p2psip" in line
                ]
                self.assertEqual((done.returncode, complaints), (0, []), done.stderr)
