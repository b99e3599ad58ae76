"""
Capture overlay traffic on loopback and let Wireshark's RELOAD dissectors
judge it.

``dumpcap`` records the TCP traffic of chosen ports on ``lo``.  Overlay
links run TLS, so tshark first decrypts it with the key log the roles write
(``--overlay-tls-key-log``; :func:`reassemble_tls_flows`).  tshark 4.0
cannot be handed that capture as it is: its ``reload-framing`` TCP path
reads the data-frame length at offset 5 of the *segment* rather than of the
frame, so a data frame that follows another frame in one segment is
misread and reported malformed.  So the TCP streams are reassembled here
(tshark still reads the capture file), cut into frames with RELOAD's
framing rule (RFC 6940 s6.5.1: type 128 is ``sequence, uint24 length,
message``; type 129 is an 8-byte ack), and each frame is written as one
UDP datagram between the same addresses and ports, where tshark's
``reload-framing`` dissector sees exactly one frame per packet.

The cutting rule is written out here rather than taken from
:mod:`p2psip.overlay.framing`, so the code under test does not decide what
a frame is.
"""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

TSHARK_TIMEOUT_SECONDS = 60.0
CAPTURE_START_TIMEOUT_SECONDS = 15.0
CAPTURE_STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2
DATA_FRAME = 128
ACK_FRAME = 129
_DATA_HEADER_BYTES = 8
_ACK_FRAME_BYTES = 9
#: An IPv4 datagram holds at most this much UDP payload.
MAX_DATAGRAM_PAYLOAD_BYTES = 65535 - 20 - 8
_LINKTYPE_RAW = 101
_STATISTICS = re.compile(r"Packets received/dropped on interface '[^']*': (\d+)/(\d+)")


class CaptureError(AssertionError):
    """The capture or its reading failed; the message says what to look at."""


class PacketCapture:
    """
    One ``dumpcap`` process writing what it sees on an interface to a file.

    Stop it with :meth:`stop`, which the test registers as a cleanup so the
    process is ended (by its pid) even when the test fails.
    """

    def __init__(self, dumpcap: str, interface: str, capture_filter: str, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "overlay.pcapng"
        self.log_path = directory / "dumpcap.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [dumpcap, "-i", interface, "-f", capture_filter, "-w", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    @inlineCallbacks
    def started(self) -> Any:
        """Fires once dumpcap says it is capturing (it prints the file name then)."""
        waited = 0.0
        while "File:" not in self.log_text():
            if self.process.poll() is not None:
                raise CaptureError(
                    f"dumpcap exited with {self.process.returncode}: {self.log_text()}"
                )
            if waited > CAPTURE_START_TIMEOUT_SECONDS:
                raise CaptureError(f"dumpcap did not start capturing: {self.log_text()}")
            yield deferLater(reactor, POLL_SECONDS, lambda: None)
            waited += POLL_SECONDS

    def stop(self) -> int:
        """
        End dumpcap (SIGTERM, then SIGKILL) and return how many packets the
        interface dropped, as dumpcap reports it (-1 when it did not say).
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(CAPTURE_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        found = _STATISTICS.search(self.log_text())
        return int(found.group(2)) if found else -1


def port_filter(ports: Iterable[int]) -> str:
    """A capture filter for TCP traffic to or from any of ``ports``."""
    return " or ".join(f"tcp port {port}" for port in sorted(set(ports)))


def run_tshark(tshark: str, arguments: Sequence[str]) -> str:
    """tshark's standard output; a failure names tshark's complaint."""
    completed = subprocess.run(
        [tshark, "-n", *arguments],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TSHARK_TIMEOUT_SECONDS,
    )
    if completed.returncode != 0:
        raise CaptureError(
            f"tshark {' '.join(arguments)} exited with {completed.returncode}: "
            f"{completed.stderr.decode(errors='replace')}"
        )
    return completed.stdout.decode()


def sentinel_connection(port: int) -> int:
    """
    Try a TCP connection to a closed loopback ``port`` and return the
    source port used: once the capture holds that SYN, it holds every
    packet sent before it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        source_port: int = probe.getsockname()[1]
        try:
            probe.connect(("127.0.0.1", port))
        except OSError:
            pass
    return source_port


@inlineCallbacks
def wait_for_sentinel(
    tshark: str, capture: PacketCapture, source_port: int, timeout_seconds: float
) -> Any:
    """Poll the capture file until the sentinel's SYN has been written to it."""
    waited = 0.0
    arguments = [
        "-r",
        str(capture.path),
        "-Y",
        f"tcp.srcport == {source_port} && tcp.flags.syn == 1",
        "-T",
        "fields",
        "-e",
        "frame.number",
    ]
    while waited < timeout_seconds:
        # A file that dumpcap is still writing may end in a partial block;
        # tshark then complains, but prints what it read.
        completed = yield deferToThread(
            subprocess.run,
            [tshark, "-n", *arguments],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TSHARK_TIMEOUT_SECONDS,
        )
        if completed.stdout.strip():
            return
        yield deferLater(reactor, POLL_SECONDS, lambda: None)
        waited += POLL_SECONDS
    raise CaptureError(f"the sentinel packet never reached {capture.path}")


@frozen
class Flow:
    """The bytes one side of a TCP connection sent, in order."""

    stream: int
    source: tuple[str, int]
    destination: tuple[str, int]
    #: (offset in ``data``, capture frame number, capture time) of each
    #: segment that brought new bytes, in order.
    segments: tuple[tuple[int, int, float], ...]
    data: bytes


def reassemble_flows(tshark: str, capture_path: Path) -> list[Flow]:
    """
    The payload of every TCP flow in the capture, reassembled by sequence
    number.  A gap (a segment the capture missed) or a retransmission that
    differs from the original is a :class:`CaptureError`.
    """
    output = run_tshark(
        tshark,
        [
            "-r",
            str(capture_path),
            "-o",
            "tcp.desegment_tcp_streams:FALSE",
            "-o",
            "tcp.relative_sequence_numbers:TRUE",
            "-Y",
            "tcp.len > 0",
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-e",
            "tcp.stream",
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "tcp.seq",
            "-e",
            "frame.number",
            "-e",
            "frame.time_epoch",
            "-e",
            "tcp.payload",
        ],
    )
    FlowKey = tuple[int, tuple[str, int], tuple[str, int]]
    pieces: dict[FlowKey, list[tuple[int, int, float, bytes]]] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        key = (int(fields[0]), (fields[1], int(fields[2])), (fields[3], int(fields[4])))
        pieces.setdefault(key, []).append(
            (
                int(fields[5]),
                int(fields[6]),
                float(fields[7]),
                bytes.fromhex(fields[8].replace(":", "")),
            )
        )
    flows = []
    for (stream, source, destination), segments in sorted(pieces.items()):
        data = bytearray()
        offsets: list[tuple[int, int, float]] = []
        for sequence, number, when, payload in segments:
            # Relative sequence numbers: the first payload byte is 1.
            start = sequence - 1
            if start > len(data):
                raise CaptureError(
                    f"stream {stream} {source}->{destination}: {start - len(data)} bytes missing "
                    f"before relative sequence {sequence}"
                )
            overlap = bytes(data[start : start + len(payload)])
            if payload[: len(overlap)] != overlap:
                raise CaptureError(
                    f"stream {stream}: a retransmission at {sequence} differs from the original"
                )
            fresh = payload[len(overlap) :]
            if fresh:
                offsets.append((len(data), number, when))
                data += fresh
        flows.append(Flow(stream, source, destination, tuple(offsets), bytes(data)))
    return flows


def reassemble_tls_flows(tshark: str, capture_path: Path, key_log: Path) -> list[Flow]:
    """
    What every TCP flow in the capture carried inside TLS, decrypted with
    the secrets in ``key_log`` (the roles' ``--overlay-tls-key-log``).

    tshark reassembles each TLS record and decrypts it; each record's
    plaintext is taken from the frame that completed it, in capture order.
    A record tshark could not decrypt (a secret missing from the key log)
    is a :class:`CaptureError`, so the result is the whole plaintext.
    """
    output = run_tshark(
        tshark,
        [
            "-r",
            str(capture_path),
            "-o",
            f"tls.keylog_file:{key_log}",
            "-o",
            "tls.desegment_ssl_records:TRUE",
            "-Y",
            "tls.record.content_type == 23",
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=,",
            "-e",
            "tcp.stream",
            "-e",
            "ip.src",
            "-e",
            "tcp.srcport",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
            "-e",
            "frame.number",
            "-e",
            "frame.time_epoch",
            "-e",
            "tls.record.content_type",
            "-e",
            "data.data",
        ],
    )
    FlowKey = tuple[int, tuple[str, int], tuple[str, int]]
    pieces: dict[FlowKey, list[tuple[int, float, bytes]]] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        key = (int(fields[0]), (fields[1], int(fields[2])), (fields[3], int(fields[4])))
        records = [t for t in fields[7].split(",") if t == "23"]
        plaintexts = [bytes.fromhex(h.replace(":", "")) for h in fields[8].split(",") if h]
        if len(plaintexts) != len(records):
            raise CaptureError(
                f"frame {fields[5]} of stream {fields[0]}: {len(records)} application data "
                f"records, {len(plaintexts)} decrypted; is every node's key log in {key_log}?"
            )
        pieces.setdefault(key, []).append((int(fields[5]), float(fields[6]), b"".join(plaintexts)))
    flows = []
    for (stream, source, destination), records_in_order in sorted(pieces.items()):
        data = bytearray()
        offsets: list[tuple[int, int, float]] = []
        for number, when, plaintext in sorted(records_in_order):
            offsets.append((len(data), number, when))
            data += plaintext
        flows.append(Flow(stream, source, destination, tuple(offsets), bytes(data)))
    return flows


@frozen
class CutFrame:
    flow: Flow
    offset: int
    data: bytes
    #: Capture frame number and time of the segment that completed the frame.
    number: int
    time: float


def cut_frames(flow: Flow) -> list[CutFrame]:
    """
    ``flow``'s bytes as RELOAD frames.  Bytes that do not start a known
    frame type, or a frame cut short, are a :class:`CaptureError`.
    """
    frames = []
    data = flow.data
    offset = 0
    while offset < len(data):
        frame_type = data[offset]
        if frame_type == DATA_FRAME:
            if len(data) - offset < _DATA_HEADER_BYTES:
                raise CaptureError(
                    f"{flow.source}->{flow.destination}: data frame header cut short at {offset}"
                )
            size = _DATA_HEADER_BYTES + int.from_bytes(data[offset + 5 : offset + 8], "big")
        elif frame_type == ACK_FRAME:
            size = _ACK_FRAME_BYTES
        else:
            raise CaptureError(
                f"{flow.source}->{flow.destination}: byte {offset} starts no frame (type {frame_type})"
            )
        end = offset + size
        if end > len(data):
            raise CaptureError(
                f"{flow.source}->{flow.destination}: frame at {offset} needs {size} bytes, "
                f"the stream has {len(data) - offset}"
            )
        number, when = _completion(flow, end)
        frames.append(CutFrame(flow, offset, data[offset:end], number, when))
        offset = end
    return frames


def _completion(flow: Flow, end: int) -> tuple[int, float]:
    """The frame number and time of the segment holding byte ``end - 1``."""
    found = flow.segments[0][1:]
    for start, number, when in flow.segments:
        if start >= end:
            break
        found = (number, when)
    return found


def in_capture_order(frames: Iterable[CutFrame]) -> list[CutFrame]:
    """
    Frames in the order their last bytes were captured.  tshark's
    ``reload-framing`` reads an ack only in a conversation that has already
    shown it a data frame, so the order of the original capture must hold.
    """
    return sorted(frames, key=lambda frame: (frame.number, frame.offset))


def write_udp_capture(path: Path, frames: Sequence[CutFrame]) -> None:
    """A pcap file (raw IPv4) with one UDP datagram per frame, in ``frames`` order."""
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, _LINKTYPE_RAW)]
    for frame in frames:
        if len(frame.data) > MAX_DATAGRAM_PAYLOAD_BYTES:
            raise CaptureError(f"a frame of {len(frame.data)} bytes does not fit one UDP datagram")
        packet = _udp_datagram(frame.flow.source, frame.flow.destination, frame.data)
        seconds = int(frame.time)
        microseconds = int(round((frame.time - seconds) * 1_000_000)) % 1_000_000
        records.append(struct.pack("<IIII", seconds, microseconds, len(packet), len(packet)))
        records.append(packet)
    path.write_bytes(b"".join(records))


def _udp_datagram(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", source[1], destination[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0x4000,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(destination[0]),
    )
    checksum = _internet_checksum(header)
    return header[:10] + struct.pack(">H", checksum) + header[12:] + udp


def _internet_checksum(data: bytes) -> int:
    total: int = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@frozen
class DecodedFrame:
    """What tshark said about one re-encapsulated frame."""

    number: int
    protocols: str
    frame_type: int | None
    message_length: int | None
    message_codes: tuple[int, ...]
    #: StoredData structures in the message, and how many of them tshark
    #: read a value from (it cannot without the Kind's data model).
    stored_data: int
    stored_values: int
    malformed: bool
    expert_severities: tuple[int, ...]
    expert_messages: tuple[str, ...]


#: ``_ws.expert.severity`` values (epan/proto.h PI_*).
EXPERT_ERROR = 0x00800000
EXPERT_WARN = 0x00600000

_FIELDS = (
    "frame.number",
    "frame.protocols",
    "reload_framing.type",
    "reload_framing.message.length",
    "reload.message.code",
    "reload.storeddata.lifetime",
    "reload.datavalue.exists",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
)


def decode_frames(
    tshark: str,
    udp_capture: Path,
    ports: Iterable[int],
    kinds: Mapping[int, tuple[str, str]] | None = None,
) -> list[DecodedFrame]:
    """
    tshark's reading of each packet of ``udp_capture`` with every port in
    ``ports`` decoded as ``reload-framing``.

    Both ends' ports are given, so whichever of the two UDP tries first
    leads to the RELOAD dissector and never to an unrelated protocol that
    happens to own an ephemeral port number.  ``kinds`` maps Kind-IDs to
    (name, Wireshark data model: ``SINGLE``, ``ARRAY`` or ``DICTIONARY``),
    which tshark needs to read stored values and their signatures, as an
    overlay's configuration document would tell it.
    """
    arguments = ["-r", str(udp_capture)]
    for port in sorted(set(ports)):
        arguments += ["-d", f"udp.port=={port},reload-framing"]
    for kind_id, (name, model) in sorted((kinds or {}).items()):
        arguments += ["-o", f'uat:reload_kindids:"{kind_id}","{name}","{model}"']
    arguments += [
        "-T",
        "fields",
        "-E",
        "separator=\t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=\x1f",
    ]
    for field in _FIELDS:
        arguments += ["-e", field]
    decoded = []
    for line in run_tshark(tshark, arguments).splitlines():
        (
            number,
            protocols,
            frame_type,
            length,
            codes,
            lifetimes,
            exists,
            malformed,
            severities,
            messages,
        ) = line.split("\t")
        decoded.append(
            DecodedFrame(
                number=int(number),
                protocols=protocols,
                frame_type=_first_int(frame_type),
                message_length=_first_int(length),
                message_codes=tuple(int(code, 0) for code in _values(codes)),
                stored_data=len(_values(lifetimes)),
                stored_values=len(_values(exists)),
                malformed=bool(malformed),
                expert_severities=tuple(int(value, 0) for value in _values(severities)),
                expert_messages=tuple(_values(messages)),
            )
        )
    return decoded


def _values(field: str) -> list[str]:
    return [value for value in field.split("\x1f") if value]


def _first_int(field: str) -> int | None:
    values = _values(field)
    return int(values[0], 0) if values else None


def frame_problems(frame: CutFrame, reading: DecodedFrame, codes: Iterable[int]) -> list[str]:
    """
    What is wrong with tshark's reading of ``frame``; empty when tshark
    decoded it as the same frame type, flagged nothing at warning level or
    above and, for a data frame, read the whole message as RELOAD with a
    message code from ``codes``.
    """
    where = f"packet {reading.number} ({frame.flow.source[1]}->{frame.flow.destination[1]})"
    problems = []
    if reading.frame_type != frame.data[0]:
        problems.append(
            f"{where}: tshark reads frame type {reading.frame_type} (protocols {reading.protocols})"
        )
    if reading.malformed or any(level >= EXPERT_WARN for level in reading.expert_severities):
        problems.append(f"{where}: tshark says {list(reading.expert_messages)}")
    if frame.data[0] == DATA_FRAME:
        if reading.message_length != len(frame.data) - _DATA_HEADER_BYTES:
            problems.append(
                f"{where}: message length {reading.message_length} in a frame of {len(frame.data)}"
            )
        if not reading.message_codes:
            problems.append(
                f"{where}: tshark did not read the message as RELOAD ({reading.protocols})"
            )
        elif reading.message_codes[0] not in set(codes):
            problems.append(f"{where}: message code {reading.message_codes[0]} is not one we send")
        if reading.stored_values != reading.stored_data:
            problems.append(
                f"{where}: tshark read {reading.stored_values} of {reading.stored_data} stored values "
                "(is every Kind in the Kind-ID table?)"
            )
    return problems
