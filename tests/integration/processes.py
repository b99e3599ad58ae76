"""
Real role processes on loopback for integration tests.

Each role runs as ``twistd -n`` in its own process with its own data
directory and log file, on ports the OS handed out.  Rings are enrolled
(:class:`OverlayCA`): the bootstrap runs the CA, the peers enrol on start.  Every process is
ended (by its own pid) in the test's cleanup, even when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.cli.admin import AdminClient, AdminError
from p2psip.enrolment.accounts import AccountsFile, Grant, accounts_path
from p2psip.enrolment.authority import OverlayAuthority, random_node_id
from p2psip.enrolment.fingerprints import root_fingerprint
from p2psip.enrolment.node_files import load_key, save_node_enrolment
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.overlay.identity import NodeIdentity
from p2psip.testing import free_port, repository_root


class RoleProcess:
    def __init__(
        self,
        role: str,
        directory: Path,
        args: list[str],
        overlay_port: int | None = None,
        *,
        listens: bool = True,
        twistd_arguments: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
    ) -> None:
        """
        ``overlay_port`` lets a caller that must know the port first (a packet
        capture) choose it; ``listens=False`` is for the thin client, which
        has no overlay listener.  ``twistd_arguments`` go before the role
        (``--logger``), ``environment`` is added to the role's.
        """
        self.environment = dict(environment or {})
        self.role = role
        self.directory = directory
        self.overlay_port = free_port() if overlay_port is None else overlay_port
        overlay = ["--overlay", f"tcp:{self.overlay_port}:interface=127.0.0.1"] if listens else []
        self.http_port = free_port()
        self.log_path = directory / "twistd.log"
        directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={self.log_path}",
            *twistd_arguments,
            role,
            *overlay,
            "--http",
            f"tcp:{self.http_port}:interface=127.0.0.1",
            "--data-dir",
            str(directory / "data"),
            *args,
        ]
        self.command = command
        self.process = self._launch()
        # The role writes its admin token there when it starts; it is read at the first call.
        self.api = AdminClient(
            f"http://127.0.0.1:{self.http_port}", token_file=directory / "data" / "admin-token"
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        environment = dict(os.environ, PYTHONPATH=str(repository_root()), **self.environment)
        return subprocess.Popen(
            self.command,
            cwd=str(self.directory),
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def restart(self) -> None:
        """Start the role again after it exited: same arguments, ports, data directory and log."""
        if self.process.poll() is None:
            raise AssertionError(f"{self.role} in {self.directory} is still running")
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = self._launch()

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.overlay_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def call(self, method: str, *args: Any) -> Deferred[Any]:
        return deferToThread(getattr(self.api, method), *args)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        self.kill(signal.SIGKILL)
        self.wait_exit()
        if self.process.stderr is not None:
            self.process.stderr.close()


@inlineCallbacks
def wait_for(condition: Any, timeout_seconds: float, what: str, poll_seconds: float = 0.3) -> Any:
    """Poll ``condition`` (a function returning a Deferred of a bool) until true."""
    waited = 0.0
    last_error: Exception | None = None
    while waited < timeout_seconds:
        try:
            if (yield condition()):
                return
        except (AdminError, OSError) as error:
            last_error = error
        yield deferLater(reactor, poll_seconds, lambda: None)
        waited += poll_seconds
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error})")


@inlineCallbacks
def ring_converged(processes: list[RoleProcess]) -> Any:
    """True when every process's predecessor and successor are the true ones."""
    statuses = []
    for process in processes:
        statuses.append((yield process.call("status")))
    ring = sorted(status["node_id"] for status in statuses)
    for status in statuses:
        if status.get("state") != "joined":
            return False
        index = ring.index(status["node_id"])
        if not status["predecessors"] or not status["successors"]:
            return False
        if status["predecessors"][0]["node_id"] != ring[index - 1]:
            return False
        if status["successors"][0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


class OverlayCA:
    """
    The CA of a test ring, made in the bootstrap's data directory before it
    starts (as its first start would), with one account every peer enrols
    under and the options that wire both sides.

    The bootstrap serves enrolment on ``ssl:PORT`` on loopback; each peer
    enrols on its first start with ``--enrol-url``, ``--enrol-user``,
    ``--enrol-password-file`` and ``--ca-fingerprint``, so the ring is an
    enrolled one and nothing is trusted on first use.
    """

    PASSWORD = "integration-enrolment-password"

    def __init__(self, bootstrap_directory: Path, overlay_name: str = "integration.test") -> None:
        self.bootstrap_directory = bootstrap_directory
        data = bootstrap_directory / "data"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.authority, _ = OverlayAuthority.load_or_create(data, overlay_name, reactor.seconds())
        self.fingerprint = root_fingerprint(self.authority.root_der)
        self.account = f"peers@{overlay_name}"
        accounts = AccountsFile.load(accounts_path(data), missing_ok=True)
        accounts.set_account(self.account, self.PASSWORD, [Grant.PEER, Grant.USER])
        accounts.save()
        self.password_file = bootstrap_directory.parent / f"{bootstrap_directory.name}-password"
        self.password_file.write_text(self.PASSWORD + "\n")
        self.enrol_port = free_port()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.enrol_port}/enrol"

    def bootstrap_arguments(self) -> list[str]:
        return ["--enrol-listen", f"ssl:{self.enrol_port}:interface=127.0.0.1"]

    def enrol_offline(self, directory: Path, node_id: int | None = None) -> None:
        """
        Leave in ``directory``'s data dir what ``p2psip enrol`` would, issued
        by the CA at hand: for a peer that starts while the bootstrap is down.
        The CA picks the Node-ID at random unless the test places the node
        with ``node_id``.
        """
        data = directory / "data"
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self.authority.issue(
            key.public_key(),
            node_id=random_node_id() if node_id is None else node_id,
            user_name=self.account,
            now=reactor.seconds(),
        )
        save_node_enrolment(data, key, certificate, self.authority.root_der, None)

    def issue_user_certificates(self, directory: Path, user_names: Iterable[str]) -> None:
        """
        User certificates bound to the enrolled super-node in ``directory``
        (its key and Node-ID), in its ``user-certs/``, as
        ``p2psip enrol --user`` leaves them.
        """
        data = directory / "data"
        node = NodeIdentity.load(data)
        key = load_key(data)
        assert key is not None
        certificates = UserCertificates(data)
        for name in user_names:
            der = self.authority.issue(
                key.public_key(), node_id=node.node_id, user_name=name, now=reactor.seconds()
            )
            certificates.save(name, der)

    def peer_arguments(self) -> list[str]:
        return [
            "--enrol-url",
            self.url,
            "--enrol-user",
            self.account,
            "--enrol-password-file",
            str(self.password_file),
            "--ca-fingerprint",
            self.fingerprint,
        ]


def start_mediator(test: TestCase, directory: Path, secret: str) -> str:
    """
    A mediator (``twistd -n p2psip-mediator``) on loopback with the shared
    ``secret``, its files in ``directory``, killed at ``test``'s cleanup;
    its control endpoint, for the ring roles' ``--mediator``.
    """
    directory.mkdir(parents=True)
    control = free_port()
    log = directory / "twistd.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            f"--logfile={log}",
            "p2psip-mediator",
            "--secret",
            secret,
            "--control",
            f"tcp:{control}:interface=127.0.0.1",
            "--stun",
            f"tcp:{free_port()}:interface=127.0.0.1",
            "--stun",
            f"udp:{free_port(kind=socket.SOCK_DGRAM)}:interface=127.0.0.1",
            "--http",
            f"tcp:{free_port()}:interface=127.0.0.1",
        ],
        cwd=str(directory),
        env=dict(os.environ, PYTHONPATH=str(repository_root())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()

    test.addCleanup(stop)
    return f"tcp:127.0.0.1:{control}"


def overlay_arguments(name: str = "integration.test") -> list[str]:
    """Fast timers so failures are noticed within seconds."""
    return [
        "--overlay-name",
        name,
        "--update-interval",
        "2",
        "--ping-interval",
        "1",
        "--request-timeout",
        "3",
    ]


__all__ = [
    "OverlayCA",
    "RoleProcess",
    "wait_for",
    "ring_converged",
    "overlay_arguments",
    "start_mediator",
    "repository_root",
]
