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
whole ring's cost of one REGISTER.

Each phase runs on until every node has had a stabilisation round after
the last REGISTER, so work a REGISTER sets off later (a new user's
certificate, stored in the overlay by the next round, RFC 6940 s8) is
counted with the phase that caused it; the same simulated time of an
idle ring (keepalives, updates) is measured first and subtracted.

Prints, per REGISTER and for both phases: ring CPU without the profiler
(the figure to compare), and from the profiled run the RELOAD messages
encoded, decoded and forwarded, ECDSA signatures and verifications; then
the functions that take the most time.  Asserts nothing.

    .venv/bin/python bench/profile_register.py [--registers 500] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, Response, parse_message
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from tests.overlay.ringsim import RingSimulation

DOMAIN = "ring.test"

#: Profiled functions counted per REGISTER: label -> (file suffix, function name).
COUNTED = {
    "messages encoded": ("overlay/messaging.py", "encode"),
    "messages decoded": ("overlay/message.py", "decode_signed_message"),
    "messages forwarded": ("overlay/messaging.py", "_forward"),
    "ECDSA signatures": ("~", "<method 'sign' of"),
    "ECDSA verifications": ("~", "<method 'verify' of"),
}


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


def _area(filename: str, function: str) -> str:
    """Where a profiled function belongs, for the table of own time by area."""
    if filename == "~":
        if "ECPublicKey" in function or "ECPrivateKey" in function:
            return "ECDSA (OpenSSL)"
        if "x509" in function or "Certificate" in function:
            return "X.509 (OpenSSL)"
        return "builtins (hashing, struct, dict, ...)"
    if filename.startswith("<attrs generated"):
        return "attrs classes (generated __init__, __hash__, __eq__)"
    parts = Path(filename).parts
    if "p2psip" in parts:
        return "/".join(parts[parts.index("p2psip") :])
    if "twisted" in parts and "site-packages" in parts:
        return "Twisted (Deferreds, logger)"
    if "tests" in parts:
        return "the simulation (fake clock, in-memory links)"
    return "other libraries"


def own_time_by_area(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own (not cumulative) profiled seconds summed per module or area, largest first."""
    totals: dict[str, float] = {}
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        area = _area(filename, function)
        totals[area] = totals.get(area, 0.0) + row[2]
    return sorted(totals.items(), key=lambda item: -item[1])


def _calls(stats: pstats.Stats, where: str, name: str) -> int:
    """How often the profiled functions ``name`` (in a file ending in ``where``) ran."""
    total = 0
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(where) and (function == name or function.startswith(name)):
            total += row[1]
    return total


class Bench:
    """One ring with super-node A's registrar and proxy, fed REGISTERs phase by phase."""

    def __init__(self, registers: int) -> None:
        self.sim = RingSimulation(seed=7)
        self.sim.grow(3)
        self.sim.run_until(self.sim.consistent, 120)
        node = self.sim.nodes[0]
        location = OverlayLocationService(node, self.sim.clock)
        self.registrar = Registrar(DOMAIN, location, self.sim.clock, trusted_network=True)
        self.sink = Sink()
        self.proxy = SipProxy(
            DOMAIN, ("192.0.2.1", 5060), node, location, self.registrar, self.sink, self.sim.clock
        )
        self.source = Hop("UDP", "192.0.2.10", 5062)
        self.users = [f"user{index:05d}" for index in range(registers)]
        # Long enough for every node's stabilisation round (jittered around
        # the update interval) to follow the phase's last REGISTER.
        self.settle_seconds = 2.0 * self.sim.config.update_interval_seconds

    def idle(self) -> None:
        self.sim.run(self.settle_seconds, step=0.01)

    def feed(self, cseq: int) -> None:
        self.sink.statuses.clear()
        for user in self.users:
            self.proxy.transactions.message_received(
                parse_message(register_bytes(user, cseq)), self.source
            )
            self.sim.clock.advance(0.001)
        self.sim.run(self.settle_seconds, step=0.01)
        ok = self.sink.statuses.count(200)
        if ok != len(self.users):
            print(f"# only {ok}/{len(self.users)} answered 200 (cseq {cseq})", flush=True)

    def stop(self) -> None:
        self.registrar.stop()
        self.proxy.transactions.terminate_all()
        self.sim.stop_all()


def cpu_of(step: Callable[[], None]) -> float:
    started = time.process_time()
    step()
    return time.process_time() - started


def timed(registers: int) -> tuple[float, float]:
    """Ring CPU microseconds per REGISTER (new AOR, refresh), idle ring subtracted, no profiler."""
    bench = Bench(registers)
    idle = cpu_of(bench.idle)
    new = cpu_of(lambda: bench.feed(1)) - idle
    refresh = cpu_of(lambda: bench.feed(2)) - idle
    bench.stop()
    return 1e6 * new / registers, 1e6 * refresh / registers


def profiled(registers: int) -> list[tuple[str, pstats.Stats, dict[str, float]]]:
    """Per phase: its profile and the counted operations per REGISTER, idle ring subtracted."""
    bench = Bench(registers)
    phases = []
    for title, step in (
        ("idle ring", bench.idle),
        ("new AORs", lambda: bench.feed(1)),
        ("refreshes", lambda: bench.feed(2)),
    ):
        profile = cProfile.Profile()
        profile.enable()
        step()
        profile.disable()
        stats = pstats.Stats(profile, stream=io.StringIO())
        counts = {label: float(_calls(stats, *where)) for label, where in COUNTED.items()}
        # Contention on a shared host moves CPU figures, not call counts.
        counts["Python function calls"] = float(stats.total_calls)  # type: ignore[attr-defined]
        phases.append((title, stats, counts))
    bench.stop()
    idle = phases[0][2]
    return [
        (title, stats, {k: (v - idle[k]) / registers for k, v in counts.items()})
        for title, stats, counts in phases[1:]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registers", type=int, default=500)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    new_us, refresh_us = timed(args.registers)
    phases = profiled(args.registers)
    print(
        f"\nring CPU per REGISTER (whole ring of 3 on one core, idle ring subtracted, "
        f"no profiler): new AOR {new_us:.0f} us, refresh {refresh_us:.0f} us\n"
    )
    print(f"| per REGISTER | {' | '.join(title for title, _, _ in phases)} |")
    print(f"|---|{'---:|' * len(phases)}")
    for label in phases[0][2]:
        print(f"| {label} | {' | '.join(f'{counts[label]:.1f}' for _, _, counts in phases)} |")
    for title, stats, _ in phases:
        areas = own_time_by_area(stats)
        total = sum(seconds for _, seconds in areas)
        print(f"\n## {title}: profiled own time by area (share of {total:.2f} s)\n")
        print("| area | share |\n|---|---:|")
        for area, seconds in areas[:16]:
            print(f"| {area} | {100 * seconds / total:.1f}% |")
    for title, stats, _ in phases:
        text = io.StringIO()
        stats.stream = text  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(args.top)
        print(f"\n## {title}: functions by own time\n")
        print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:8000])


if __name__ == "__main__":
    main()
