"""
Where a REGISTER's CPU goes in a ring: cProfile over a whole in-process ring.

Three real ``OverlayNode``s (self-signed, as ``--insecure``) exchange real
signed RELOAD messages over an in-memory network on one fake clock
(``tests/overlay/ringsim.py``); super-node A runs the real registrar and
proxy on its node.  ``--registers`` REGISTERs are fed to A's transaction
layer, first each with a new AOR (what the SIPp ladders send), then the
same AORs again (refreshes); every step of every node (SIP parse, the
registrar, the store, signing, routing, the holder's and the replicas'
verification, the answers) runs in this process, so the profile shows the
whole ring's cost of one REGISTER.  Prints CPU microseconds per REGISTER
for both and the functions that take the most time; asserts nothing.

    .venv/bin/python bench/profile_register.py [--registers 500] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, Response, parse_message
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from tests.overlay.ringsim import RingSimulation

DOMAIN = "ring.test"


class Sink:
    """A SIP transport that keeps the responses' status codes."""

    def __init__(self) -> None:
        self.statuses: list[int] = []

    def send_request(self, request: Request, target: Hop, on_error: object) -> None:
        pass

    def send_response(self, response: Response, source: Hop) -> None:
        self.statuses.append(response.status)


def register_bytes(user: str, cseq: int) -> bytes:
    return (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK{user}c{cseq};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:{user}@{DOMAIN}>;tag=f{cseq}\r\n"
        f"To: <sip:{user}@{DOMAIN}>\r\n"
        f"Call-ID: {user}@192.0.2.10\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@192.0.2.10:5062>\r\n"
        "Expires: 600\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def run(registers: int, top: int) -> None:
    sim = RingSimulation(seed=7)
    sim.grow(3)
    sim.run_until(sim.consistent, 120)
    node = sim.nodes[0]
    location = OverlayLocationService(node, sim.clock)
    registrar = Registrar(DOMAIN, location, sim.clock, trusted_network=True)
    sink = Sink()
    proxy = SipProxy(DOMAIN, ("192.0.2.1", 5060), node, location, registrar, sink, sim.clock)
    source = Hop("UDP", "192.0.2.10", 5062)
    users = [f"user{index:05d}" for index in range(registers)]

    def feed(cseq: int) -> float:
        sink.statuses.clear()
        cpu = time.process_time()
        for user in users:
            proxy.transactions.message_received(parse_message(register_bytes(user, cseq)), source)
            sim.clock.advance(0.001)
        sim.run(5.0, step=0.01)
        used = time.process_time() - cpu
        ok = sink.statuses.count(200)
        print(f"# {ok}/{registers} answered 200 (cseq {cseq})", flush=True)
        return 1e6 * used / max(1, ok)

    profile = cProfile.Profile()
    profile.enable()
    new_us = feed(1)
    profile.disable()
    refresh_profile = cProfile.Profile()
    refresh_profile.enable()
    refresh_us = feed(2)
    refresh_profile.disable()
    print(
        f"\nring CPU per REGISTER (whole ring of 3, one core, profiler on): "
        f"new AOR {new_us:.0f} us, refresh {refresh_us:.0f} us\n"
    )
    for title, which in (("new AORs", profile), ("refreshes", refresh_profile)):
        text = io.StringIO()
        stats = pstats.Stats(which, stream=text)
        stats.sort_stats("tottime").print_stats(top)
        print(f"## {title}: functions by own time\n")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
    registrar.stop()
    proxy.transactions.terminate_all()
    sim.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registers", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    run(args.registers, args.top)


if __name__ == "__main__":
    main()
