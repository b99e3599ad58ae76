#!/usr/bin/env python3
"""
Media relay throughput and added latency: our relay against rtpengine
(userspace forwarding), same load, same run.

For each call count (default 1, 50, 200) a load generator opens two UDP
sockets per call, a caller and a callee, and sends 160-byte RTP packets at
50 packets a second in each direction, for ``--seconds``.  Every payload
carries its send time (CLOCK_MONOTONIC, shared by the processes of one
host), so the receiver knows each packet's one-way time.  The same load
goes:

* ``direct``: caller to callee with no relay (the loopback baseline);
* ``p2psip``: through our relay (``RelaySessions`` with the Twisted UDP
  adapter on the default reactor), run in a subprocess pinned to one CPU;
* ``rtpengine``: through ``rtpengine`` with ``--table=-1`` (no kernel
  module: userspace forwarding), one worker thread, pinned to the same CPU,
  driven over its ng control protocol (bencode over UDP on loopback):
  ``offer`` and ``answer`` per call, ``delete`` at the end.

Reported per relay and call count: packets/s forwarded, loss, p50 and p99
added latency (one-way time minus the direct baseline's median), and CPU
per forwarded packet (the relay process's user+system time from
``/proc/PID/stat`` over the measured window, divided by packets forwarded).

    python bench/media_relay.py                       # 1, 50, 200 calls, 10 s each
    python bench/media_relay.py --calls 1,10 --seconds 2   # a short run
    python bench/media_relay.py --no-rtpengine

Loopback only; every process it starts is stopped by its pid, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from p2psip.testing import free_port
from stun_load import stop  # bench/ is the script's folder, first on sys.path

LOCAL = "127.0.0.1"
PAYLOAD_BYTES = 160
PACKETS_PER_SECOND = 50
RTP_HEADER = struct.Struct("!BBHII")
STAMP = struct.Struct("!QI")  # send time in ns, call index
#: Latencies of packets sent in the first half second are left out (sockets, caches warming up).
WARM_UP_SECONDS = 0.5


# -- the relay under test, in its own process -----------------------------------


def serve_relay(calls: int, low_port: int) -> None:
    """
    The subprocess side: read each call's two endpoints from stdin (one JSON
    line), make the sessions, print the relay ports, forward until SIGTERM.
    """
    from twisted.internet import reactor

    from p2psip.media.relay import PortPool
    from p2psip.media.sdp import parse_sdp
    from p2psip.media.sessions import RelaySessions
    from p2psip.media.udp import UdpSocketOpener

    endpoints = json.loads(sys.stdin.readline())
    sessions = RelaySessions(
        PortPool(low_port, low_port + 8 * calls + 64),
        UdpSocketOpener(reactor, LOCAL),
        sessions_per_source=calls + 1,
    )
    ports = []
    for index, (caller_port, callee_port) in enumerate(endpoints):
        session = sessions.create(f"bench-{index}", "caller", LOCAL, 0)
        offer = parse_sdp(
            f"v=0\r\nc=IN IP4 {LOCAL}\r\nm=audio {caller_port} RTP/AVP 0\r\n".encode()
        )
        answer = parse_sdp(
            f"v=0\r\nc=IN IP4 {LOCAL}\r\nm=audio {callee_port} RTP/AVP 0\r\n".encode()
        )
        to_callee = sessions.sdp_from(session, True, offer, LOCAL)[0]
        to_caller = sessions.sdp_from(session, False, answer, LOCAL)[0]
        assert to_callee is not None and to_caller is not None
        # The caller sends to the caller-side port, which the callee's SDP names.
        ports.append((to_caller.rtp, to_callee.rtp))
    print(json.dumps(ports), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run()


def process_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, in ns resolution (``/proc/PID/task/*/schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def pin(pid: int, cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError:
            pass


# -- rtpengine over its ng protocol ---------------------------------------------


def bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(value[k]) for k in sorted(value)) + b"e"
    raise TypeError(value)


def bdecode(data: bytes, at: int = 0) -> tuple[Any, int]:
    kind = data[at : at + 1]
    if kind == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1 : end]), end + 1
    if kind in (b"l", b"d"):
        at += 1
        items = []
        while data[at : at + 1] != b"e":
            item, at = bdecode(data, at)
            items.append(item)
        if kind == b"l":
            return items, at + 1
        return {items[i].decode(): items[i + 1] for i in range(0, len(items), 2)}, at + 1
    colon = data.index(b":", at)
    length = int(data[at:colon])
    return data[colon + 1 : colon + 1 + length], colon + 1 + length


class NgClient:
    """rtpengine's ng control protocol: ``cookie bencoded-dict`` over UDP."""

    def __init__(self, port: int) -> None:
        self.address = (LOCAL, port)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.settimeout(2.0)

    def command(self, **fields: Any) -> dict[str, Any]:
        cookie = b"%x" % random.getrandbits(48)
        self.socket.sendto(cookie + b" " + bencode(fields), self.address)
        while True:
            data, _ = self.socket.recvfrom(65536)
            if data.startswith(cookie + b" "):
                reply, _ = bdecode(data, len(cookie) + 1)
                assert isinstance(reply, dict)
                if reply.get("result") not in (b"ok", b"pong"):
                    raise RuntimeError(f"rtpengine {fields['command']}: {reply}")
                return reply

    def close(self) -> None:
        self.socket.close()


def sdp_port(sdp: bytes) -> int:
    for line in sdp.decode().splitlines():
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise ValueError("no audio stream in rtpengine's SDP")


def start_rtpengine(
    directory: Path, calls: int, cpu: int | None
) -> tuple[subprocess.Popen[bytes], NgClient]:
    program = shutil.which("rtpengine")
    if program is None:
        raise FileNotFoundError("rtpengine is not installed (Debian rtpengine-daemon)")
    ng_port = free_port(socket.SOCK_DGRAM)
    cli_port = free_port()
    low = random.randrange(20000, 30000) & ~1
    process = subprocess.Popen(
        [
            program,
            "--foreground",
            "--log-stderr",
            "--log-level=3",
            "--table=-1",
            f"--interface={LOCAL}",
            f"--listen-ng={LOCAL}:{ng_port}",
            f"--listen-cli={LOCAL}:{cli_port}",
            f"--port-min={low}",
            f"--port-max={low + 8 * calls + 64}",
            "--num-threads=1",
            f"--pidfile={directory / 'rtpengine.pid'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(directory / "rtpengine.log", "wb"),
    )
    pin(process.pid, cpu)
    client = NgClient(ng_port)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.command(command="ping")
                return process, client
            except (TimeoutError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "rtpengine.log").read_text(errors="replace")[-800:]
                    raise RuntimeError(f"rtpengine did not start: {log}") from None
    except BaseException:
        client.close()
        stop(process)
        raise


def rtpengine_calls(client: NgClient, endpoints: list[tuple[int, int]]) -> list[tuple[int, int]]:
    ports = []
    for index, (caller_port, callee_port) in enumerate(endpoints):
        call_id = f"bench-{index}-{random.getrandbits(32):x}"
        offer = client.command(
            command="offer",
            **{"call-id": call_id, "from-tag": "caller"},
            sdp=f"v=0\r\no=- 1 1 IN IP4 {LOCAL}\r\ns=-\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
            f"m=audio {caller_port} RTP/AVP 0\r\n",
        )
        answer = client.command(
            command="answer",
            **{"call-id": call_id, "from-tag": "caller", "to-tag": "callee"},
            sdp=f"v=0\r\no=- 1 1 IN IP4 {LOCAL}\r\ns=-\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
            f"m=audio {callee_port} RTP/AVP 0\r\n",
        )
        # The callee sends to the port in the offer rtpengine rewrote, the caller to the answer's.
        ports.append((sdp_port(answer["sdp"]), sdp_port(offer["sdp"])))
    return ports


# -- the load generator ---------------------------------------------------------


class Load:
    """Two sockets per call; 50 pps each way; one-way times of what comes back."""

    def __init__(self, calls: int) -> None:
        self.calls = calls
        self.caller_sockets = [self._socket() for _ in range(calls)]
        self.callee_sockets = [self._socket() for _ in range(calls)]

    @staticmethod
    def _socket() -> socket.socket:
        handle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        handle.bind((LOCAL, 0))
        handle.setblocking(False)
        return handle

    def endpoints(self) -> list[tuple[int, int]]:
        return [
            (a.getsockname()[1], b.getsockname()[1])
            for a, b in zip(self.caller_sockets, self.callee_sockets, strict=True)
        ]

    def run(self, targets: list[tuple[int, int]], seconds: float) -> dict[str, Any]:
        """``targets[i]``: (port the caller sends to, port the callee sends to)."""
        selector = selectors.DefaultSelector()
        for handle in self.caller_sockets + self.callee_sockets:
            selector.register(handle, selectors.EVENT_READ)
        # The calls' packets are spread evenly over each 20 ms frame, as
        # independent phones' would be: packet k belongs to call k % calls.
        spacing = 1.0 / PACKETS_PER_SECOND / self.calls
        start = time.monotonic() + 0.2
        end = start + seconds
        total = int(seconds * PACKETS_PER_SECOND) * self.calls
        next_packet = 0
        sent = 0
        received = 0
        latencies: list[int] = []
        padding = b"\x00" * (PAYLOAD_BYTES - STAMP.size)
        measured_from = int((start + WARM_UP_SECONDS) * 1e9)
        while True:
            now = time.monotonic()
            if now >= end + 0.3:
                break
            while next_packet < total and now >= start + next_packet * spacing:
                index = next_packet % self.calls
                frame = next_packet // self.calls
                packet = (
                    RTP_HEADER.pack(0x80, 0, frame & 0xFFFF, frame * 160, index)
                    + STAMP.pack(time.monotonic_ns(), index)
                    + padding
                )
                to_callee, to_caller = targets[index]
                self.caller_sockets[index].sendto(packet, (LOCAL, to_callee))
                self.callee_sockets[index].sendto(packet, (LOCAL, to_caller))
                sent += 2
                next_packet += 1
            due = start + next_packet * spacing if next_packet < total else end + 0.3
            for key, _ in selector.select(max(0.0, due - time.monotonic())):
                handle = key.fileobj
                assert isinstance(handle, socket.socket)
                while True:
                    try:
                        data = handle.recv(2048)
                    except BlockingIOError:
                        break
                    arrived = time.monotonic_ns()
                    stamp, _ = STAMP.unpack_from(data, RTP_HEADER.size)
                    if stamp >= measured_from:
                        latencies.append(arrived - stamp)
                    received += 1
        selector.close()
        latencies.sort()
        return {"sent": sent, "received": received, "latencies_ns": latencies}

    def close(self) -> None:
        for handle in self.caller_sockets + self.callee_sockets:
            handle.close()


def percentile(values: list[int], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))] / 1000.0


def measure(
    name: str, calls: int, seconds: float, cpu: int | None, directory: Path, baseline_us: float
) -> dict[str, Any]:
    load = Load(calls)
    process: subprocess.Popen[bytes] | None = None
    client: NgClient | None = None
    try:
        endpoints = load.endpoints()
        if name == "direct":
            targets = [(callee, caller) for caller, callee in endpoints]
        elif name == "p2psip":
            process = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve-relay",
                    str(calls),
                    "--low-port",
                    str(random.randrange(30000, 50000) & ~1),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            pin(process.pid, cpu)
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(endpoints).encode() + b"\n")
            process.stdin.flush()
            targets = [tuple(pair) for pair in json.loads(process.stdout.readline())]  # type: ignore[misc]
        else:
            process, client = start_rtpengine(directory, calls, cpu)
            targets = rtpengine_calls(client, endpoints)
        cpu_before = process_cpu_seconds(process.pid) if process else 0.0
        result = load.run(targets, seconds)
        cpu_used = (process_cpu_seconds(process.pid) - cpu_before) if process else 0.0
    finally:
        load.close()
        if client is not None:
            client.close()
        if process is not None:
            stop(process)
    latencies = result["latencies_ns"]
    received = result["received"]
    return {
        "relay": name,
        "calls": calls,
        "pps": received / seconds,
        "loss": 1.0 - received / result["sent"] if result["sent"] else float("nan"),
        "p50_us": percentile(latencies, 0.50) - baseline_us,
        "p99_us": percentile(latencies, 0.99) - baseline_us,
        "raw_p50_us": percentile(latencies, 0.50),
        "cpu_us_per_packet": (cpu_used / received * 1e6) if received and process else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", default="1,50,200", help="comma-separated concurrent call counts"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of load per run")
    parser.add_argument(
        "--cpu", type=int, default=1, help="CPU the relays are pinned to (-1: none)"
    )
    parser.add_argument("--no-rtpengine", action="store_true", help="skip the rtpengine anchor")
    parser.add_argument("--serve-relay", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--low-port", type=int, default=40000, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve_relay is not None:
        serve_relay(arguments.serve_relay, arguments.low_port)
        return
    cpu = None if arguments.cpu < 0 else arguments.cpu
    relays = ["p2psip"]
    if not arguments.no_rtpengine:
        if shutil.which("rtpengine"):
            relays.append("rtpengine")
        else:
            print("rtpengine not installed (apt-get install rtpengine-daemon): no anchor")
    rows = []
    with tempfile.TemporaryDirectory(prefix="media-bench-") as directory:
        for calls in [int(c) for c in arguments.calls.split(",")]:
            direct = measure("direct", calls, arguments.seconds, None, Path(directory), 0.0)
            baseline = direct["raw_p50_us"]
            print(
                f"{calls} call(s): direct loopback one-way p50 {baseline:.1f} us, loss {direct['loss']:.2%}"
            )
            for relay in relays:
                try:
                    row = measure(relay, calls, arguments.seconds, cpu, Path(directory), baseline)
                except (RuntimeError, OSError) as e:
                    print(f"{relay}: cannot run: {e}")
                    continue
                rows.append(row)
                print(
                    f"  {relay:10} {row['pps']:8.0f} pkt/s forwarded  loss {row['loss']:.3%}  "
                    f"added p50 {row['p50_us']:7.1f} us  p99 {row['p99_us']:7.1f} us  "
                    f"CPU {row['cpu_us_per_packet']:6.2f} us/pkt",
                    flush=True,
                )
    print()
    print(
        "| relay | calls | packets/s | loss | added p50 (us) | added p99 (us) | CPU/packet (us) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['relay']} | {row['calls']} | {row['pps']:.0f} | {row['loss']:.3%} | "
            f"{row['p50_us']:.1f} | {row['p99_us']:.1f} | {row['cpu_us_per_packet']:.2f} |"
        )


if __name__ == "__main__":
    main()
