"""
CPU per REGISTER and per call in the SIP layer of one super-node, without the ring.

The super-node's SIP parts (transaction layer, proxy, registrar, location
service) as the roles build them, on an in-memory stand-in for the
overlay (``tests/sip/memory_storage.py``) and a fake clock, fed datagram
bytes; every message sent is serialised as the UDP transport would.  What
is left out is the socket and the overlay (signatures, Store, Fetch):
this is the part of a super-node's cost that the SIP code owns, so it
is measured in CPU microseconds per operation (``time.process_time``),
which holds up on a machine shared with other work, unlike rates.

* REGISTER: a new AOR each time (as SIPp's REGISTER ladder sends), 200 back.
* call: INVITE from a caller to a registered callee served by this node,
  the callee's 200, ACK, BYE and its 200, all proxied (5 requests and
  responses in, 5 out).
* held: the objects the garbage collector tracks per answered call while
  its transactions wait out Timers J and L, at ``--call-rate``.
* 503 while overloaded: a new REGISTER refused statelessly, through the
  full parse and the transaction layer, then from the transport's
  partial read (``SipTransport.refused_early``).

``--profile`` prints the functions that take the time (cProfile).

Usage::

    .venv/bin/python bench/sip_path.py [--registers 5000] [--calls 2000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.logger import LogLevel

from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, Response, make_response, parse_message
from p2psip.sip.overload import OverloadGuard, OverloadThresholds
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.testing import HeapClock, MemoryUDPReactor
from p2psip.util import gc_tuning
from p2psip.util.logs import set_log_level
from tests.sip.memory_storage import MemoryOverlayStorage

DOMAIN = "example.org"
NODE_ID = 0xAAAA0000000000000000000000000001
ADDRESS = ("203.0.113.1", 5060)
CALLER = Hop("UDP", "198.51.100.10", 5070)
CALLEE = Hop("UDP", "192.0.2.7", 40001)


class SerialisingSender:
    """What the UDP transport does with a message it sends: its bytes (kept, last only)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []

    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        self.requests.append(request.to_bytes())

    def send_response(self, response: Response, source: Hop) -> None:
        self.responses.append(response.to_bytes())


class SuperNodeSip:
    """The SIP half of a super-node on a fake overlay and a fake clock."""

    def __init__(self) -> None:
        self.clock = HeapClock()
        self.clock.advance(1_764_000_000.0)
        storage = MemoryOverlayStorage(NODE_ID, self.clock, {}, {(NODE_ID, 5060): ADDRESS})
        location = OverlayLocationService(storage, self.clock)
        self.registrar = Registrar(DOMAIN, location, self.clock, trusted_network=True)
        self.sender = SerialisingSender()
        self.proxy = SipProxy(
            DOMAIN,
            ADDRESS,
            storage,
            location,
            self.registrar,
            self.sender,
            self.clock,
            credentials=self.registrar.credentials,
        )

    def receive(self, data: bytes, source: Hop) -> None:
        self.proxy.transactions.message_received(parse_message(data), source)

    def stop(self) -> None:
        self.registrar.stop()
        self.proxy.transactions.terminate_all()


def register(user: str, number: int, contact: Hop) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {contact.host}:{contact.port};branch=z9hG4bKr{user}{number}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag=r{number}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: reg{user}{number}@{contact.host}\r\n"
        "CSeq: 1 REGISTER\r\n"
        f"Contact: <sip:{user}@{contact.host}:{contact.port}>\r\n"
        "Expires: 3600\r\n"
        "User-Agent: sipp-anchor\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


SDP = (
    b"v=0\r\no=user1 53655765 2353687637 IN IP4 198.51.100.10\r\ns=-\r\n"
    b"c=IN IP4 198.51.100.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def invite(number: int) -> bytes:
    host, port = CALLER.host, CALLER.port
    return (
        f"INVITE sip:callee@{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKi{number}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: sipp <sip:caller@{host}:{port}>;tag={number}SIPpTag00\r\n"
        f"To: <sip:callee@{DOMAIN}>\r\n"
        f"Call-ID: {number}-call@{host}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: sip:caller@{host}:{port}\r\n"
        "Subject: Performance Test\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(SDP)}\r\n\r\n"
    ).encode() + SDP


def in_dialog(method: str, cseq: int, number: int, route_set: list[str], to: str) -> bytes:
    host, port = CALLER.host, CALLER.port
    routes = "".join(f"Route: {route}\r\n" for route in route_set)
    return (
        f"{method} sip:callee@{CALLEE.host}:{CALLEE.port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK{method[0]}{number}\r\n"
        f"{routes}"
        "Max-Forwards: 70\r\n"
        f"From: sipp <sip:caller@{host}:{port}>;tag={number}SIPpTag00\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {number}-call@{host}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: sip:caller@{host}:{port}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class CallDriver:
    """Plays caller and callee around the proxy; times its own (callee) side to subtract it."""

    def __init__(self, node: SuperNodeSip) -> None:
        self.node = node
        self.route_set: list[str] | None = None
        self.own_seconds = 0.0

    def answer(self, status: int, to_tag: str | None) -> bytes:
        """The callee's response to the request the proxy just forwarded."""
        started = time.process_time()
        forwarded = parse_message(self.node.sender.requests[-1])
        assert isinstance(forwarded, Request)
        data = make_response(forwarded, status, to_tag=to_tag).to_bytes()
        self.own_seconds += time.process_time() - started
        return data

    def call(self, number: int) -> None:
        node = self.node
        node.receive(invite(number), CALLER)
        node.receive(self.answer(200, f"callee{number}"), CALLEE)
        if self.route_set is None:
            ok = parse_message(node.sender.responses[-1])
            assert isinstance(ok, Response) and ok.status == 200, ok
            self.route_set = [str(route) for route in reversed(ok.record_routes)]
        to = f"<sip:callee@{DOMAIN}>;tag=callee{number}"
        node.receive(in_dialog("ACK", 1, number, self.route_set, to), CALLER)
        node.receive(in_dialog("BYE", 2, number, self.route_set, to), CALLER)
        node.receive(self.answer(200, None), CALLEE)
        if not node.sender.responses[-1].startswith(b"SIP/2.0 200"):
            raise SystemExit(f"call {number} failed: {node.sender.responses[-1][:60]!r}")


def measure(
    label: str,
    count: int,
    step: Callable[[int], None],
    clock: HeapClock,
    profile: bool,
    top: int,
) -> None:
    """Run ``step`` ``count`` times, a simulated millisecond apart (timers fire in time)."""
    profiler = cProfile.Profile() if profile else None
    start = time.process_time()
    if profiler is not None:
        profiler.enable()
    for number in range(count):
        step(number)
        clock.advance(0.001)
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - start
    print(f"{label:<44} {1e6 * spent / count:8.1f} us CPU each ({count} in {spent:.2f} s)")
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--registers", type=int, default=5000)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--call-rate", type=float, default=160.0, help="calls/s for the held-state figure"
    )
    parser.add_argument("--profile", action="store_true", help="print the cProfile tables")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}; CPU time, so other load on the machine matters little")
    # The collector as a super-node runs it (p2psip.util.gc_tuning), not Python's
    # defaults, and the log level a role starts with (--log-level info).
    gc_tuning.tune_for_server()
    set_log_level(LogLevel.info)
    node = SuperNodeSip()
    gc_tuning.freeze_after_start_up()
    try:
        measure(
            "REGISTER, new AOR each, 200",
            args.registers,
            lambda n: node.receive(register(f"u{n}", n, CALLEE), CALLEE),
            node.clock,
            args.profile,
            args.top,
        )
        node.receive(register("callee", 0, CALLEE), CALLEE)
        driver = CallDriver(node)
        driver.call(0)
        driver.own_seconds = 0.0
        measure(
            "call INVITE/200/ACK/BYE/200, proxied",
            args.calls,
            driver.call,
            node.clock,
            args.profile,
            args.top,
        )
        print(
            f"{'  of which the callee side (2 answers built)':<44} "
            f"{1e6 * driver.own_seconds / args.calls:8.1f} us"
        )
        held_while_waiting(node, driver, args.call_rate)
        refusal_costs(node, args.registers)
    finally:
        node.stop()


def held_while_waiting(node: SuperNodeSip, driver: CallDriver, rate: float) -> None:
    """
    What an answered call keeps while its server transactions wait out
    Timers J and L (32 s): calls at ``rate`` a second for 40 simulated
    seconds, then the objects the collector tracks, per call still held.
    A full collection walks all of them (``p2psip.util.gc_tuning``).
    """
    gc.collect()
    before = len(gc.get_objects())
    for number in range(int(40 * rate)):
        driver.call(10_000_000 + number)
        node.sender.requests.clear()
        node.sender.responses.clear()
        node.clock.advance(1 / rate)
    gc.collect()
    held = len(node.proxy.transactions.server_transactions) / 2
    tracked = len(gc.get_objects()) - before
    print(
        f"{'answered calls waiting out their timers':<44} {tracked / held:8.1f} tracked objects "
        f"each ({held:.0f} calls at {rate:g}/s; the fake clock's timers included)"
    )


def refusal_costs(node: SuperNodeSip, count: int) -> None:
    """An overloaded node's stateless 503 to a new REGISTER: the full parse, then the partial read."""
    guard = OverloadGuard(OverloadThresholds(max_lag_seconds=1e-9), lambda: 0, lambda: 1.0)
    node.proxy.overload = guard
    transport = SipTransport(MemoryUDPReactor(), node.proxy.transactions)
    datagrams = [register(f"r{n}", n, CALLEE) for n in range(count)]
    started = time.process_time()
    for data in datagrams:
        node.receive(data, CALLEE)
    full = time.process_time() - started
    started = time.process_time()
    for data in datagrams:
        if transport.refused_early(data, CALLEE.host, CALLEE.port) is None:
            raise SystemExit("the partial read did not refuse a new REGISTER")
    early = time.process_time() - started
    print(f"{'503 while overloaded, full parse':<44} {1e6 * full / count:8.1f} us CPU each")
    print(f"{'503 while overloaded, partial read':<44} {1e6 * early / count:8.1f} us CPU each")
    node.proxy.overload = None


if __name__ == "__main__":
    main()
