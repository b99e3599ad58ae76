"""
Wire conformance judged by Wireshark: a ring of real ``twistd`` processes
on loopback is captured with ``dumpcap``, its TLS decrypted with the key
logs the roles write, and tshark's ``reload-framing`` and ``reload``
dissectors must read every overlay frame (see
:mod:`tests.interop.capture` for why each frame is handed to tshark as its
own packet).
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.overlay.bodies import DataModel
from p2psip.overlay.kinds import DEFAULT_KINDS
from p2psip.overlay.message import MessageCode
from p2psip.testing import free_port, require_root, require_tool
from tests.integration.processes import OverlayCA, RoleProcess, overlay_arguments, wait_for
from tests.integration.processes import ring_converged as converged
from tests.interop.capture import (
    DATA_FRAME,
    PacketCapture,
    cut_frames,
    decode_frames,
    frame_problems,
    in_capture_order,
    port_filter,
    reassemble_tls_flows,
    sentinel_connection,
    wait_for_sentinel,
    write_udp_capture,
)

PEERS = 3
NAMES = [f"wire{i}@interop.test" for i in range(6)]
#: Every code the overlay may put on the wire.
CODES_WE_SEND = {code.value for code in MessageCode}
#: Codes this scenario must produce: Join, Attach, Update, Ping, Store,
#: Fetch and Leave, each as request and answer.
EXPECTED_CODES = {
    code.value
    for name in ("JOIN", "ATTACH", "UPDATE", "PING", "STORE", "FETCH", "LEAVE")
    for code in (MessageCode[f"{name}_REQ"], MessageCode[f"{name}_ANS"])
}

#: Our Kinds as Wireshark's RELOAD Kind-ID table wants them, so that tshark
#: reads each StoredData value and its signature rather than stopping at an
#: unknown Kind.
WIRESHARK_KINDS = {
    kind.kind_id: (
        kind.name,
        {DataModel.SINGLE_VALUE: "SINGLE"}.get(kind.data_model, kind.data_model.name),
    )
    for kind in DEFAULT_KINDS.values()
}


class ReloadWireTests(TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.ca = OverlayCA(Path(self.mktemp()).resolve() / "bootstrap", "interop.test")

    def start(self, role: str, name: str, port: int, extra: list[str]) -> RoleProcess:
        if role == "p2psip-bootstrap":
            directory = self.ca.bootstrap_directory
            security = self.ca.bootstrap_arguments()
        else:
            directory = self.ca.bootstrap_directory.parent / name
            security = self.ca.peer_arguments()
        # The links are TLS: each role writes its secrets so tshark can decrypt.
        key_log = directory / "tls-keys.log"
        self.key_logs.append(key_log)
        process = RoleProcess(
            role,
            directory,
            overlay_arguments("interop.test")
            + security
            + ["--overlay-tls-key-log", str(key_log), *extra],
            overlay_port=port,
        )
        self.addCleanup(process.stop)
        return process

    @inlineCallbacks
    def test_tshark_decodes_every_overlay_frame(self) -> Any:
        """tshark decodes every captured overlay frame as RELOAD, none malformed, covering each method used."""
        dumpcap = require_tool("dumpcap")
        tshark = require_tool("tshark")
        require_root("capturing on the loopback interface")
        self.key_logs: list[Path] = []
        ports: list[int] = []
        while len(ports) < PEERS + 1:
            port = free_port()
            if port not in ports:
                ports.append(port)
        directory = Path(self.mktemp()).resolve()
        capture = PacketCapture(dumpcap, "lo", port_filter(ports), directory / "capture")
        self.addCleanup(capture.stop)
        yield capture.started()

        bootstrap = self.start("p2psip-bootstrap", "bootstrap", ports[0], [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        peers = [
            self.start("p2psip-peer", f"peer{index}", port, ["--bootstrap", bootstrap.endpoint])
            for index, port in enumerate(ports[1:])
        ]
        everyone = [bootstrap, *peers]
        for peer in peers:
            yield wait_for(
                lambda p=peer: p.call("status").addCallback(lambda s: s.get("state") == "joined"),
                30,
                "a peer to join",
            )
        yield wait_for(
            lambda: bootstrap.call("ring").addCallback(
                lambda r: r["complete"] and r["count"] == len(everyone)
            ),
            30,
            "the ring to include every peer",
        )
        yield wait_for(lambda: converged(everyone), 30, "every peer to know its true neighbours")

        for index, name in enumerate(NAMES):
            yield peers[index % PEERS].call("put", name, f"contact-{index}", 600)
        for process in everyone:
            for index, name in enumerate(NAMES):
                got = yield process.call("get", name)
                self.assertEqual(got.get("value"), f"contact-{index}", (process.role, got))

        # Leave: SIGTERM makes a peer hand over its data and say goodbye;
        # then the rest shut down the same way so no stream ends mid-frame.
        leaver = peers[1]
        leaver.kill(signal.SIGTERM)
        yield deferToThread(leaver.wait_exit)
        self.assertIn("left the ring", leaver.log_text())
        for process in everyone:
            process.kill(signal.SIGTERM)
        for process in everyone:
            yield deferToThread(process.wait_exit)
        source_port = sentinel_connection(ports[0])
        yield wait_for_sentinel(tshark, capture, source_port, 15)
        dropped = yield deferToThread(capture.stop)
        self.assertEqual(dropped, 0, capture.log_text())

        key_log = directory / "tls-keys.log"
        key_log.write_bytes(b"".join(path.read_bytes() for path in self.key_logs))
        flows = yield deferToThread(reassemble_tls_flows, tshark, capture.path, key_log)
        frames = in_capture_order(frame for flow in flows for frame in cut_frames(flow))
        self.assertTrue(frames, "no overlay payload was captured")
        self.assertEqual(sum(len(f.data) for f in frames), sum(len(flow.data) for flow in flows))
        udp_capture = directory / "frames.pcap"
        write_udp_capture(udp_capture, frames)
        endpoints = {port for flow in flows for port in (flow.source[1], flow.destination[1])}
        decoded = yield deferToThread(
            decode_frames, tshark, udp_capture, endpoints, WIRESHARK_KINDS
        )

        self.assertEqual(len(decoded), len(frames))
        problems = []
        seen_codes: set[int] = set()
        for frame, reading in zip(frames, decoded):
            problems += frame_problems(frame, reading, CODES_WE_SEND)
            if frame.data[0] == DATA_FRAME and reading.message_codes:
                seen_codes.add(reading.message_codes[0])
        self.assertEqual(problems, [])
        self.assertTrue(
            any(reading.stored_values for reading in decoded), "tshark read no stored value"
        )
        self.assertEqual(EXPECTED_CODES - seen_codes, set(), sorted(seen_codes))
