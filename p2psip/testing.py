"""
Test support shipped with the package: fakes and helpers that several test
modules (and other projects embedding p2psip) need.

Nothing here is used by the roles themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SkipTest

REQUIRE_INTEROP_VARIABLE = "P2PSIP_REQUIRE_INTEROP"


def interop_required() -> bool:
    """True when a missing external tool must fail the run (CI sets this)."""
    return os.environ.get(REQUIRE_INTEROP_VARIABLE, "") not in ("", "0")


class MissingTool(AssertionError):
    """An interop test's external tool is missing while interop is required."""


def skip_or_fail(reason: str) -> None:
    """
    Skip the calling test, or fail it when ``P2PSIP_REQUIRE_INTEROP=1``.

    CI installs every tool the interop tests drive; there a missing tool is a
    broken set-up that must not hide behind a skip.
    """
    if interop_required():
        raise MissingTool(f"{reason} (required because {REQUIRE_INTEROP_VARIABLE}=1; run `make deps`)")
    raise SkipTest(f"{reason}; run `make deps` to install it")


def require_tool(name: str) -> str:
    """The full path of an external program, or skip/fail the test."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        skip_or_fail(f"{name} is not installed")
        raise AssertionError("unreachable")
    return path


def require_root(what: str) -> None:
    """Skip/fail a test that needs root (network namespaces, raw sockets)."""
    if os.geteuid() != 0:
        skip_or_fail(f"{what} needs root")


def repository_root() -> Path:
    """The checkout this package was imported from."""
    return Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """
    The shared test data folder that lies beside the checkout.

    ``P2PSIP_SHARED`` overrides the location.  The data is read in place and
    never copied into the repository.
    """
    override = os.environ.get("P2PSIP_SHARED")
    return Path(override) if override else repository_root().parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file or folder under the shared folder, or skip/fail if it is absent."""
    path = shared_dir().joinpath(*parts)
    if not path.exists():
        skip_or_fail(f"shared test data {'/'.join(parts)} not found beside the checkout")
    return path


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """
    A port number the OS just handed out on ``host``.

    Only for tests that start external processes, which must be told a port
    on their command line; in-process listeners bind port 0 instead.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class _StubUDPPort:
    def __init__(self, port: int, protocol: Any, interface: str) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", self.interface or "0.0.0.0", self.port)


class MemoryUDPReactor(MemoryReactorClock):
    """A memory reactor that also records ``listenUDP`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.udpPorts: dict[int, _StubUDPPort] = {}

    def listenUDP(  # noqa: N802 - Twisted's name
        self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192
    ) -> _StubUDPPort:
        stub = _StubUDPPort(port, protocol, interface)
        self.udpPorts[port] = stub
        return stub
