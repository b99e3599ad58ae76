"""
SIP super-nodes as real ``twist`` processes, for the SIP benchmark scripts.

The overlay is named ``127.0.0.1`` because the shared SIPp scenarios use the
server's address as the SIP domain.  Every process is started on ports the
OS handed out and is stopped by its own pid.  The per-source request limit
is switched off (``--sip-rate-limit 0``): one SIPp on one address drives
thousands of requests a second, which a public super-node would answer
with 503s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec

from p2psip.cli.admin import AdminClient, AdminError
from p2psip.enrolment.authority import OverlayAuthority, random_node_id
from p2psip.enrolment.node_files import save_node_enrolment
from p2psip.enrolment.user_certificates import UserCertificates
from p2psip.testing import free_port, repository_root, shared_dir
from p2psip.usages.sip import registration_resource_name
from p2psip.util.admin_token import token_path

DOMAIN = "127.0.0.1"
START_SECONDS = 30.0


@dataclass
class SuperNode:
    """One running super-node: its process and the ports it listens on."""

    role: str
    directory: Path
    sip_port: int
    overlay_port: int
    http_port: int
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def log_path(self) -> Path:
        return self.directory / "twistd.log"

    @property
    def overlay_endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.overlay_port}"

    def admin(self) -> AdminClient:
        """Its admin API, with the token from its data dir (``/api/get`` needs it)."""
        return AdminClient(
            f"http://127.0.0.1:{self.http_port}", token_file=token_path(self.directory / "data")
        )


def start_super_node(
    directory: Path,
    sip_port: int,
    role: str = "p2psip-bootstrap",
    extra: list[str] | None = None,
    auth: bool = False,
    users: Path | None = None,
    enrolled_aors: list[str] | None = None,
    ports: tuple[int, int] | None = None,
    wait: bool = True,
) -> SuperNode:
    """
    Start one role process with SIP on ``sip_port`` and wait for its SIP listener.

    By default the ring is ``--insecure`` (the SIP benchmarks measure SIP
    and routing, not enrolment, and need no CA).  With ``enrolled_aors``
    (a bootstrap only) it is a secure one: a CA, the node's certificate and
    a user certificate for every AOR are made in its data dir before it
    starts, as its first start and ``p2psip enrol --user`` would.
    ``ports`` (overlay, HTTP) restarts a node where it was; ``wait=False``
    returns at once instead of waiting for the SIP listener.
    """
    directory.mkdir(parents=True, exist_ok=True)
    overlay_port, http_port = ports if ports is not None else (free_port(), free_port())
    security = ["--insecure"]
    if enrolled_aors is not None:
        enrol_bootstrap_offline(directory / "data", enrolled_aors)
        security = ["--enrol-listen", f"ssl:{free_port()}:interface=127.0.0.1"]
    command = [
        *twist_command(directory / "twistd.log"),
        role,
        "--overlay-name",
        DOMAIN,
        "--overlay",
        f"tcp:{overlay_port}:interface=127.0.0.1",
        "--http",
        f"tcp:{http_port}:interface=127.0.0.1",
        "--data-dir",
        str(directory / "data"),
        "--sip",
        f"udp:{sip_port}:interface=127.0.0.1",
        *security,
        # One SIPp is one source address: the request limit would measure itself.
        "--sip-rate-limit",
        "0",
        *(extra or []),
    ]
    if auth:
        if users is None:
            raise ValueError("authentication on needs a users file")
        command += ["--users", str(users), "--sip-digest-algorithms", "MD5"]
    else:
        command += ["--sip-trusted-network"]
    environment = dict(os.environ, PYTHONPATH=str(repository_root()))
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    node = SuperNode(role, directory, sip_port, overlay_port, http_port, process)
    if not wait:
        return node
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {role} exited at start-up; see {node.log_path}")
        if node.log_path.exists() and "SIP super-node for" in node.log_path.read_text(
            errors="replace"
        ):
            return node
        time.sleep(0.2)
    stop_process(process)
    raise SystemExit(f"the {role} did not start within {START_SECONDS:g} s; see {node.log_path}")


def twist_command(log_file: Path) -> list[str]:
    """
    ``twist`` with a text log, as the systemd units run a role.

    The roles drop their per-request debug lines at the default
    ``--log-level info`` under ``twist`` and ``twistd`` alike
    (``p2psip.util.logs``); before that level existed, ``twistd`` wrote
    them all and they cost about a quarter of the CPU being measured.
    """
    return [sys.executable, "-m", "twisted", "--log-format=text", f"--log-file={log_file}"]


def enrol_bootstrap_offline(data_dir: Path, aors: list[str]) -> None:
    """The bootstrap's CA, its node certificate and user certificates for ``aors``."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = time.time()
    authority, _ = OverlayAuthority.load_or_create(data_dir, DOMAIN, now)
    key = ec.generate_private_key(ec.SECP256R1())
    node_id = random_node_id()
    certificate = authority.issue(key.public_key(), node_id=node_id, user_name=None, now=now)
    save_node_enrolment(data_dir, key, certificate, authority.root_der, None)
    certificates = UserCertificates(data_dir)
    for aor in aors:
        name = registration_resource_name(aor)
        certificates.save(
            name, authority.issue(key.public_key(), node_id=node_id, user_name=name, now=now)
        )


def stop_process(process: subprocess.Popen[bytes], grace_seconds: float = 20.0) -> None:
    """SIGTERM (a role leaves the ring cleanly, SIPp writes its statistics), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def finish_or_stop(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Let a SIPp run with ``-m`` end by itself within ``seconds``, else stop it."""
    try:
        process.wait(seconds)
    except subprocess.TimeoutExpired:
        stop_process(process, grace_seconds=10)


def ring_converged(nodes: list[SuperNode]) -> bool:
    """True when every node's first predecessor and successor are the true ones."""
    try:
        statuses: list[dict[str, Any]] = [node.admin().status() for node in nodes]
    except (AdminError, OSError):
        return False
    ring = sorted(status["node_id"] for status in statuses)
    for status in statuses:
        index = ring.index(status["node_id"])
        if not status.get("predecessors") or not status.get("successors"):
            return False
        if status["predecessors"][0]["node_id"] != ring[index - 1]:
            return False
        if status["successors"][0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


def load_sipp_ladder() -> types.ModuleType:
    """The shared anchors' ``sipp_ladder`` module (its step runner, parsers and PASS rule)."""
    anchors = shared_dir() / "anchors"
    if not (anchors / "sipp_ladder.py").exists():
        raise SystemExit(
            f"{anchors / 'sipp_ladder.py'} not found: point P2PSIP_SHARED at the shared test data folder"
        )
    if str(anchors) not in sys.path:
        sys.path.insert(0, str(anchors))
    import sipp_ladder  # type: ignore[import-not-found]

    return sipp_ladder


__all__ = [
    "DOMAIN",
    "SuperNode",
    "start_super_node",
    "stop_process",
    "finish_or_stop",
    "twist_command",
    "ring_converged",
    "load_sipp_ladder",
]
