"""
The role processes of ``make demo``: each one ``twistd -n`` as an operator
would run it, on loopback, with its own data directory and log.

:class:`DemoCA` is the overlay CA, made in the bootstrap's data directory
before anything starts (as the bootstrap's first start would); it issues
every node's certificate with the Node-ID the demo places it at (RFC 6940
s11: the CA chooses Node-IDs) and the thin clients' user certificates, and
leaves them where ``p2psip enrol`` would.  Placing the nodes is what makes
the account repeatable: which super-node each client attaches to, which
one relays, which one is killed.

:class:`RoleProcess` starts a role, reads its ``/status`` through the admin
API (in a thread, the client is blocking) and ends it by its own pid:
SIGTERM (the role leaves the ring) or SIGKILL (it just vanishes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

import p2psip
from p2psip.cli.admin import AdminClient, AdminError
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.node_files import save_node_enrolment
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.testing import free_port

#: Where the role processes find the package (and its twistd plugin).
PACKAGE_ROOT = Path(p2psip.__file__).resolve().parent.parent


def free_udp_and_tcp_port() -> int:
    """A port free for UDP and TCP on loopback (a SIP listener takes both)."""
    while True:
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def free_port_range(pairs: int) -> tuple[int, int]:
    """An even-aligned UDP range of ``pairs`` RTP/RTCP pairs, free right now."""
    while True:
        low = free_port(socket.SOCK_DGRAM) & ~1
        high = low + 2 * pairs - 1
        if high > 65535:
            continue
        probes: list[socket.socket] = []
        try:
            for port in range(low, high + 1):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(probe)
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return low, high


class DemoCA:
    """The overlay CA in the bootstrap's data directory, issuing placed certificates."""

    def __init__(self, bootstrap_data: Path, overlay_name: str, now: float) -> None:
        bootstrap_data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.overlay_name = overlay_name
        self.authority, _ = OverlayAuthority.load_or_create(bootstrap_data, overlay_name, now)
        self.now = now

    def issue_node(self, data: Path, node_id: int, users: tuple[str, ...] = ()) -> None:
        """
        A key and a node certificate for ``node_id`` in ``data``, and a user
        certificate bound to that key for each of ``users`` (``user-certs/``).
        """
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        account = f"demo@{self.overlay_name}"
        certificate = self.authority.issue(
            key.public_key(), node_id=node_id, user_name=account, now=self.now
        )
        save_node_enrolment(data, key, certificate, self.authority.root_der, None)
        certificates = UserCertificates(data)
        for user in users:
            der = self.authority.issue(
                key.public_key(), node_id=node_id, user_name=user, now=self.now
            )
            certificates.save(user, der)


class RoleProcess:
    """One ``twistd -n ROLE`` process of the demo, its admin API and its pid."""

    def __init__(self, name: str, role: str, directory: Path, arguments: list[str]) -> None:
        self.name = name
        self.role = role
        self.directory = directory
        #: The Node-ID (hex) the CA issued it, and its SIP listener's port, if any.
        self.node_id = ""
        self.sip_port = 0
        self.http_port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "twistd.log"
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            role,
            "--http",
            f"tcp:{self.http_port}:interface=127.0.0.1",
            *arguments,
        ]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.process = subprocess.Popen(
            command,
            cwd=str(directory),
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.api = AdminClient(
            f"http://127.0.0.1:{self.http_port}",
            token_file=directory / "data" / "admin-token",
            timeout_seconds=5.0,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def call(self, method: str, *arguments: Any) -> Deferred[Any]:
        """An admin API call (``status``, ``get``...) in a thread; its JSON answer."""
        return deferToThread(getattr(self.api, method), *arguments)

    def log_tail(self, characters: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL by pid: no Leave, the kernel closes its sockets."""
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait()

    def terminate(self) -> None:
        """SIGTERM by pid: twistd stops its services (a peer leaves the ring)."""
        if self.running:
            os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout_seconds: float) -> None:
        """Wait for the exit after :meth:`terminate`; SIGKILL when it takes too long."""
        try:
            self.process.wait(timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill()


async def wait_for_status(
    reactor: IReactorTime,
    process: RoleProcess,
    condition: Any,
    timeout_seconds: float,
    what: str,
    poll_seconds: float = 0.1,
) -> dict[str, Any]:
    """Poll ``process``'s ``/status`` until ``condition(status)``; that status."""
    started = reactor.seconds()
    last: str = "no answer yet"
    while reactor.seconds() - started < timeout_seconds:
        if not process.running:
            raise SystemExit(f"the {process.name} exited; its log:\n{process.log_tail()}")
        try:
            status = cast("dict[str, Any]", await process.call("status"))
            if condition(status):
                return status
            last = f"state {status.get('state')}"
        except (AdminError, OSError) as error:
            last = str(error)
        await task.deferLater(reactor, poll_seconds, lambda: None)
    raise SystemExit(
        f"timed out after {timeout_seconds:g} s waiting for {what} ({last}); "
        f"the {process.name}'s log ends:\n{process.log_tail()}"
    )


__all__ = [
    "DemoCA",
    "RoleProcess",
    "wait_for_status",
    "free_udp_and_tcp_port",
    "free_port_range",
]
