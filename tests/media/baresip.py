"""
baresip as a test phone: its config in a temporary directory, its audio
from a WAV file (the ``aufile`` module), auto-answer, and its JSON command
interface (``ctrl_tcp``, netstrings over TCP) to dial, hang up and hear
its events (``REGISTER_OK``, ``CALL_RINGING``, ``CALL_ESTABLISHED``,
``CALL_CLOSED``).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import NetstringReceiver
from twisted.trial.unittest import TestCase

from p2psip.testing import free_port
from tests.media.processes import Child, spawn

MODULES = "/usr/lib/baresip/modules"


def free_udp_and_tcp_port() -> int:
    """
    A port free for UDP and TCP, with the next port free for TCP: baresip's
    sip_listen binds UDP and TCP on the port and its TLS transport on the next.
    """
    while True:
        port = free_port(socket.SOCK_DGRAM)
        if port >= 65535:
            continue
        try:
            for number in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind(("127.0.0.1", number))
        except OSError:
            continue
        return port


#: Attempts at starting baresip when a port it was given was taken meanwhile.
START_ATTEMPTS = 3


class ControlConnection(NetstringReceiver):
    """baresip's ctrl_tcp: commands out, responses and events in."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._waiting: list[tuple[str, Deferred[dict[str, Any]]]] = []

    def stringReceived(self, string: bytes) -> None:
        message = json.loads(string)
        if not message.get("event"):
            return
        self.events.append(message)
        for entry in list(self._waiting):
            if message.get("type") == entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(message)

    def command(self, name: str, params: str = "") -> None:
        self.sendString(json.dumps({"command": name, "params": params, "token": name}).encode())

    def event(self, kind: str, timeout: float = 15.0) -> Deferred[dict[str, Any]]:
        """The first event of ``kind`` (one already seen counts)."""
        found: Deferred[dict[str, Any]] = Deferred()
        for message in self.events:
            if message.get("type") == kind:
                found.callback(message)
                return found
        self._waiting.append((kind, found))
        return found.addTimeout(timeout, reactor)


class Baresip:
    """One baresip process registered as ``aor`` through ``proxy`` (host:port)."""

    def __init__(
        self,
        test: TestCase,
        program: str,
        directory: Path,
        aor: str,
        password: str,
        proxy: tuple[str, int],
        transport: str,
        audio: Path,
    ) -> None:
        self.test = test
        self.program = program
        self.directory = directory
        directory.mkdir(parents=True)
        self.audio = audio
        self._write_config()
        outbound = f"sip:{proxy[0]}:{proxy[1]};transport={transport}"
        (directory / "accounts").write_text(
            f'<{aor};transport={transport}>;auth_pass={password};outbound="{outbound}";'
            "regint=600;answermode=auto;audio_codecs=PCMU;mediaenc=\n"
        )
        (directory / "contacts").write_text("")
        self.child: Child | None = None
        self.control: ControlConnection | None = None

    def _write_config(self) -> None:
        """The config file, with freshly chosen ports for SIP, RTP and control."""
        self.sip_port = free_udp_and_tcp_port()
        self.control_port = free_port()
        rtp_low = free_port(socket.SOCK_DGRAM) & ~1
        audio = os.path.relpath(self.audio, self.directory)
        (self.directory / "config").write_text(
            "\n".join(
                [
                    "poll_method epoll",
                    # Loopback only: the SDP then names 127.0.0.1, where the test listens.
                    "net_interface 127.0.0.1",
                    f"sip_listen 127.0.0.1:{self.sip_port}",
                    # baresip keeps a device name in 128 bytes: a long absolute path
                    # (a deep checkout) is cut short, so name the file from its cwd.
                    f"audio_source aufile,{audio}",
                    f"audio_alert aufile,{audio}",
                    "audio_player aufile,/dev/null",
                    f"rtp_ports {rtp_low}-{min(rtp_low + 20, 65535)}",
                    "rtcp_mux no",
                    f"module_path {MODULES}",
                    "module g711.so",
                    "module aufile.so",
                    "module_tmp account.so",
                    "module_app menu.so",
                    "module_app ctrl_tcp.so",
                    f"ctrl_tcp_listen 127.0.0.1:{self.control_port}",
                    "",
                ]
            )
        )

    @inlineCallbacks
    def start(self) -> Generator[Deferred[Any], Any, None]:
        """Start the process and connect to its command interface."""
        for _ in range(START_ATTEMPTS):
            self.child = spawn(self.test, self.program, ["-f", str(self.directory)], self.directory)
            seen = yield self.child.wait_any([b"baresip is ready.", b"Address already in use"])
            if seen == b"baresip is ready.":
                break
            # Another process took a port between our probe and baresip's bind.
            if not self.child.ended.called:
                self.child.transport.signalProcess("KILL")  # type: ignore[union-attr]
            yield self.child.ended
            self._write_config()
        else:
            raise RuntimeError(f"baresip found its ports taken {START_ATTEMPTS} times")
        self.control = yield connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", self.control_port), ControlConnection()
        )
        assert self.control is not None
        self.test.addCleanup(self._disconnect)

    def _disconnect(self) -> None:
        if self.control is not None and self.control.transport is not None:
            self.control.transport.loseConnection()
