"""
The ring scenario of ``tests/overlay/test_ring.py`` at full size: a hundred
peers on one fake clock, with in-memory links carrying real signed RELOAD
messages.

The suite proves the properties at forty peers; this script runs the same
steps (grow the ring, random lookups, store values, crash waves that each
take a ring-adjacent pair and more, let the ring repair) at a size where
they take minutes, and prints how long each step took, in wall-clock and
in simulated seconds, the lookup hops and the values kept.  Prints
figures; asserts nothing.  Run with the project's virtualenv:

    .venv/bin/python bench/ring_simulation.py [--peers 100] [--seed 2026]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2psip.overlay.errors import OverlayError
from p2psip.util.ids import resource_id
from tests.overlay.ringsim import RingSimulation

#: Simulated seconds a crash wave may take to repair before the run gives up on it.
REPAIR_LIMIT_SECONDS = 600.0


def percentile(values: list[int], fraction: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Steps:
    """Prints one table row per step: wall-clock seconds, simulated seconds, what it found."""

    def __init__(self, sim: RingSimulation) -> None:
        self.sim = sim
        print("| step | wall s | simulated s | result |")
        print("|---|---|---|---|")

    def begin(self) -> None:
        self.wall = time.perf_counter()
        self.simulated = self.sim.clock.seconds()

    def row(self, step: str, result: str) -> None:
        wall = time.perf_counter() - self.wall
        simulated = self.sim.clock.seconds() - self.simulated
        print(f"| {step} | {wall:.1f} | {simulated:.1f} | {result} |", flush=True)


def run(peers: int, values: int, lookups: int, waves: int, wave_size: int, seed: int) -> None:
    sim = RingSimulation(seed=seed)
    steps = Steps(sim)
    started = time.perf_counter()

    steps.begin()
    sim.grow(peers)
    steps.row(f"{peers} peers join, one after another", f"{len(sim.live())} joined")

    steps.begin()
    sim.run_until(sim.consistent, REPAIR_LIMIT_SECONDS)
    steps.row("neighbours converge", "every successor and predecessor exact")

    steps.begin()
    results = sim.random_lookups(lookups)
    hops = [result.hops for _, result in results]
    correct = sum(result.responsible == sim.owner(target) for target, result in results)
    reference = 0.5 * math.log2(peers)
    steps.row(
        f"{lookups} random lookups",
        f"{correct}/{lookups} at the responsible peer; hops mean {sum(hops) / len(hops):.2f},"
        f" p99 {percentile(hops, 0.99)}, max {max(hops)} (½·log2 N = {reference:.2f})",
    )

    steps.begin()
    names = [f"user{i}" for i in range(values)]
    for name in names:
        sim.wait(sim.random.choice(sim.live()).put(name, name.encode()))
    resources = [resource_id(name) for name in names]
    sim.run_until(lambda: sim.replicated(resources), REPAIR_LIMIT_SECONDS)
    steps.row(f"store {values} values", f"each on its peer and {sim.config.replicas} replicas")

    for wave in range(1, waves + 1):
        steps.begin()
        for node in sim.pick_wave(wave_size):
            sim.crash(node)
        sim.run_until(lambda: sim.repaired(resources), REPAIR_LIMIT_SECONDS)
        steps.row(
            f"crash wave {wave}: {wave_size} peers, one adjacent pair",
            f"repaired, {len(sim.live())} peers left",
        )

    steps.begin()
    kept = failed = 0
    for name in names:
        try:
            got = sim.wait(sim.random.choice(sim.live()).get(name))
        except OverlayError:
            failed += 1
            continue
        kept += got.value == name.encode()
    steps.row(
        "fetch every value from a random peer",
        f"{kept}/{values} values kept, {failed} fetches failed",
    )
    sim.stop_all()
    print(f"\ntotal wall-clock seconds: {time.perf_counter() - started:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=100)
    parser.add_argument("--values", type=int, help="values stored (default: twice the peers)")
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--wave-size", type=int, help="peers per wave (default: a twentieth)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    run(
        args.peers,
        args.values or 2 * args.peers,
        args.lookups,
        args.waves,
        args.wave_size or max(2, args.peers // 20),
        args.seed,
    )


if __name__ == "__main__":
    main()
