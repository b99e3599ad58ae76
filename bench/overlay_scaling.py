"""
Cost curves of the overlay: hops, lookups/s, idle traffic, memory, joins.

Two kinds of ring, both in one process:

* **Routing model** (every N, up to 1,000): one real ``ChordTopology`` per
  peer with the tables a converged ring has (4 successors, 4
  predecessors, the fingers ``finger_indices_to_repair`` asks for), and
  random lookups walked hop by hop with ``next_hop``: the hops a lookup
  takes in a converged ring of N, computed by the routing code itself.
* **Simulated ring** (N = 16 by default, ``--real 16,64`` for more):
  real ``OverlayNode``s exchanging real signed RELOAD messages over an
  in-memory network on one fake clock (``tests/overlay/ringsim.py``).
  From it: join convergence (simulated seconds from a peer's Join until
  every neighbour table of the ring is exact, mean and worst over the
  joins), lookups per CPU second (the whole ring's
  work for one lookup, on one core), idle maintenance bytes per node per
  second (RELOAD messages as encoded, by method; the framing and TLS
  records of real links add about 40 bytes a message, counted in the
  "wire" column), memory per node (``tracemalloc``), and memory per stored
  registration with its replicas (SIP-REGISTRATION dictionary entries put
  through the ring for ``--aors`` users, each signed with the user's
  self-signed credential, whose certificate the ring stores as well).
* **Stores alone** (``--store-aors``, 100,000 by default): the three
  ``DataStore``s that hold one registration (the responsible peer and two
  replicas), filled with signed SIP-REGISTRATION entries and the users'
  CERTIFICATE_BY_USER values as they arrive in StoreReqs (encoded, then
  decoded by each holder; the pass with certificates at a tenth of the
  count), at the AOR count of the issue's target, where a
  ring of real nodes would take an hour of CPU.  This is the part of the
  ring's memory that grows with the registrations; the nodes' bounded
  caches (certificates, replay window, recent signatures) do not.

Prints a table and, with matplotlib installed (``pip install .[bench]``),
writes ``bench/results/overlay_scaling.png``.  Asserts nothing; the CPU
figures share the machine with whatever else runs (contended).

    .venv/bin/python bench/overlay_scaling.py [--sizes 16,64,256,1000] [--real 16,64]
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2psip.overlay import bodies
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.kinds import CERTIFICATE_BY_USER, DEFAULT_KINDS, data_models
from p2psip.overlay.message import MessageCode, peek_code
from p2psip.overlay.storage import DataStore
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.topology import ChordTopology
from p2psip.testing import MemoryLink
from p2psip.usages.sip import (
    SIP_REGISTRATION_KIND,
    SipRegistration,
    encode_registration,
    registration_key,
)
from p2psip.util.ids import resource_id
from tests.overlay.ringsim import RingSimulation

RESULTS = Path(__file__).resolve().parent / "results"
#: Framing (RFC 6940 s5.6: 4-byte frame header and sequence) and a TLS record
#: (5-byte header, 16-byte tag, 8-byte explicit nonce) per message on a real link.
WIRE_OVERHEAD_BYTES = 4 + 4 + 5 + 16 + 8
IDLE_SECONDS = 300.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- routing model ---------------------------------------------------------------


def converged_tables(ids: list[int]) -> dict[int, ChordTopology]:
    ring = sorted(ids)
    tables = {}
    for index, own in enumerate(ring):
        topology = ChordTopology(own)
        near = [ring[(index + k) % len(ring)] for k in range(-4, 5) if k]
        topology.add_peers(p for p in near if p != own)
        for finger in topology.finger_indices_to_repair():
            target = topology.finger_target(finger)
            owner = ring[bisect.bisect_left(ring, target) % len(ring)]
            topology.set_finger(finger, owner)
        tables[own] = topology
    return tables


def model_hops(peers: int, lookups: int, rng: random.Random) -> list[int]:
    ids = [rng.getrandbits(128) for _ in range(peers)]
    tables = converged_tables(ids)
    hops = []
    for _ in range(lookups):
        node = rng.choice(ids)
        target = rng.getrandbits(128)
        count = 0
        while True:
            step = tables[node].next_hop(target)
            if step is None:
                break
            node, count = step, count + 1
            if count > 64:
                raise AssertionError("routing loop in the model")
        hops.append(count)
    return hops


# -- simulated ring --------------------------------------------------------------


class TrafficMeter:
    """Counts what every in-memory link sends, by RELOAD method."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.messages: Counter[str] = Counter()
        self._send = MemoryLink.send
        meter = self

        def counting_send(link: MemoryLink, data: bytes) -> None:
            try:
                name = MessageCode(peek_code(data)[1]).name.lower()
            except Exception:
                name = "other"
            meter.bytes[name] += len(data)
            meter.messages[name] += 1
            meter._send(link, data)

        MemoryLink.send = counting_send  # type: ignore[method-assign]

    def reset(self) -> None:
        self.bytes.clear()
        self.messages.clear()

    def close(self) -> None:
        MemoryLink.send = self._send  # type: ignore[method-assign]


def simulated_ring(peers: int, aors: int, seed: int) -> dict[str, Any]:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    meter = TrafficMeter()
    # The roles' timers (update 60 s, ping 15 s), not the ring tests' faster ones.
    sim = RingSimulation(config=OverlayConfig(overlay_name="ring.test"), seed=seed)
    try:
        wall = time.perf_counter()
        sim.found()
        joins = []
        for _ in range(peers - 1):
            started = sim.clock.seconds()
            sim.join(settle_seconds=0.0)
            sim.run_until(sim.consistent, 600.0, step=0.05)
            joins.append(sim.clock.seconds() - started)
        convergence = round(max(joins), 2)
        join_mean = round(sum(joins) / len(joins), 2)
        grow_wall = time.perf_counter() - wall
        sim.run(30.0)  # the joins' Updates and finger repairs settle
        per_node = (tracemalloc.get_traced_memory()[0] - base) / peers
        meter.reset()
        sim.run(IDLE_SECONDS, step=2.0)
        idle_bytes = sum(meter.bytes.values()) / peers / IDLE_SECONDS
        idle_messages = sum(meter.messages.values()) / peers / IDLE_SECONDS
        by_method = {
            name: round(count / peers / IDLE_SECONDS, 1) for name, count in meter.bytes.items()
        }
        cpu = time.process_time()
        results = sim.random_lookups(500)
        lookups_per_cpu_second = 500 / max(1e-9, time.process_time() - cpu)
        hops = [result.hops for _, result in results]
        # The super-nodes' credentials for the users are theirs, not the
        # overlay's: made before the baseline.
        placed = []
        for index in range(aors):
            name = f"user{index:06d}@ring.test"
            node = sim.random.choice(sim.live())
            placed.append((index, name, node, node.user_credential(name)))
        before = tracemalloc.get_traced_memory()[0]
        snapshot_before = tracemalloc.take_snapshot()
        for index, name, node, credential in placed:
            value = encode_registration(
                SipRegistration.route(f"<sip:u{index}@192.0.2.1>;expires-at=1", node.node_id)
            )
            sim.wait(
                node.put_dictionary_entry(
                    name,
                    SIP_REGISTRATION_KIND,
                    registration_key(node.node_id),
                    value,
                    3600,
                    signer=credential,
                )
            )
        sim.run(30.0)
        per_registration = (tracemalloc.get_traced_memory()[0] - before) / max(1, aors)
        growth = tracemalloc.take_snapshot().compare_to(snapshot_before, "filename")
        by_file = {
            Path(stat.traceback[0].filename).name: round(stat.size_diff / max(1, aors))
            for stat in growth[:6]
        }
        return {
            "peers": peers,
            "join_convergence_s": convergence,
            "join_mean_s": join_mean,
            "grow_wall_s": round(grow_wall, 1),
            "memory_per_node_kib": round(per_node / 1024, 1),
            "idle_bytes_per_node_s": round(idle_bytes, 1),
            "idle_wire_bytes_per_node_s": round(
                idle_bytes + idle_messages * WIRE_OVERHEAD_BYTES, 1
            ),
            "idle_by_method": by_method,
            "lookups_per_cpu_s": round(lookups_per_cpu_second),
            "sim_hops_mean": round(sum(hops) / len(hops), 2),
            "aors": aors,
            "memory_per_registration_kib": round(per_registration / 1024, 2),
            "memory_per_registration_by_file": by_file,
        }
    finally:
        meter.close()
        sim.stop_all()
        tracemalloc.stop()


def store_memory(aors: int, seed: int, with_certificates: bool) -> dict[str, Any]:
    """
    Bytes per AOR held by the three stores of its holders (see the module docstring).

    Every value is really signed (one super-node key; the user certificate's
    DER is the same size for every user, so one is reused).  The stores run
    with ``verify=False``: the signatures' cost is not what is measured.
    """
    node = NodeIdentity.from_secret(seed)
    credential = node.self_signed_user("user000000@ring.test")
    identity = credential.signer_identity()
    models = data_models(DEFAULT_KINDS)
    limits = OverlayConfig(overlay_name="ring.test").limits
    kind_id = SIP_REGISTRATION_KIND
    certificate_index = node.node_id % CERTIFICATE_BY_USER.max_count
    now = 1_767_225_600.0

    def signed(resource: int, kind: int, value: Any, storage_time: int) -> bodies.StoredData:
        signature = credential.sign(
            bodies.stored_data_signature_input(
                resource, kind, storage_time, bodies.encode_stored_value(value), identity
            )
        )
        return bodies.StoredData(storage_time, 3600, value, signature)

    requests = []
    for index in range(aors):
        resource = resource_id(f"user{index:06d}@ring.test")
        storage_time = int(now * 1000) + index
        registration = bodies.DictionaryEntry(
            registration_key(node.node_id),
            bodies.DataValue(
                True,
                encode_registration(
                    SipRegistration.route(f"<sip:u{index}@192.0.2.1>;expires-at=1", node.node_id)
                ),
            ),
        )
        kind_data = [
            bodies.StoreKindData(
                kind_id, 0, (signed(resource, kind_id, registration, storage_time),)
            )
        ]
        if with_certificates:
            certificate = bodies.ArrayEntry(
                certificate_index, bodies.DataValue(True, credential.certificate_der)
            )
            kind_data.append(
                bodies.StoreKindData(
                    CERTIFICATE_BY_USER.kind_id,
                    0,
                    (signed(resource, CERTIFICATE_BY_USER.kind_id, certificate, storage_time),),
                )
            )
        requests.append((resource, bodies.StoreReq(resource, 0, tuple(kind_data)).encode()))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    snapshot_before = tracemalloc.take_snapshot()
    holders = [DataStore(DEFAULT_KINDS, max_values=4 * aors) for _ in range(3)]
    cpu = time.process_time()
    for resource, encoded in requests:
        for replica_number, store in enumerate(holders):
            request = bodies.StoreReq.decode(encoded, limits, models)
            store.store_request(
                resource, request.kind_data, now, verify=False, replica_number=replica_number
            )
    stored_cpu = time.process_time() - cpu
    held = tracemalloc.get_traced_memory()[0] - before
    growth = tracemalloc.take_snapshot().compare_to(snapshot_before, "lineno")
    tracemalloc.stop()
    by_line = {
        f"{Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}": round(
            stat.size_diff / aors
        )
        for stat in growth[:8]
    }
    assert all(store.slot_count == aors * len(kind_data) for store in holders)
    return {
        "aors": aors,
        "with_certificates": with_certificates,
        "bytes_per_aor": round(held / aors),
        "encoded_bytes_per_aor": sum(len(encoded) for _, encoded in requests) // aors,
        "store_cpu_us": round(stored_cpu / aors / 3 * 1e6),
        "by_line": by_line,
    }


def plot(model: dict[int, list[int]], real: list[dict[str, Any]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not installed (pip install .[bench]): no plot", flush=True)
        return None
    RESULTS.mkdir(exist_ok=True)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sizes = sorted(model)
    left.plot(sizes, [sum(model[n]) / len(model[n]) for n in sizes], "o-", label="mean hops")
    left.plot(sizes, [percentile(model[n], 0.99) for n in sizes], "s--", label="p99 hops")
    left.plot(sizes, [0.5 * math.log2(n) for n in sizes], ":", label="0.5 log2 N")
    left.set_xscale("log")
    left.set_xlabel("peers N")
    left.set_ylabel("hops")
    left.legend()
    left.set_title("lookup hops (routing model)")
    if real:
        right.bar(
            [str(r["peers"]) for r in real],
            [r["idle_wire_bytes_per_node_s"] for r in real],
            label="idle traffic, B/s per node",
        )
        right.axhline(1024, color="red", linestyle=":", label="1 KiB/s target")
        right.set_xlabel("peers N (simulated ring)")
        right.legend()
        right.set_title("idle maintenance traffic")
    path = RESULTS / "overlay_scaling.png"
    figure.tight_layout()
    figure.savefig(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="16,64,256,1000", help="routing model sizes")
    parser.add_argument("--real", default="16", help="simulated ring sizes (64 takes minutes)")
    parser.add_argument("--lookups", type=int, default=5000)
    parser.add_argument("--aors", type=int, default=300, help="registrations per simulated ring")
    parser.add_argument(
        "--store-aors", type=int, default=100_000, help="AORs for the stores-alone measurement"
    )
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    began = time.perf_counter()
    rng = random.Random(args.seed)
    model = {n: model_hops(n, args.lookups, rng) for n in map(int, args.sizes.split(","))}
    print("\n## Lookup hops in a converged ring (routing model)\n")
    print("| N | mean hops | p99 | max | 0.5 log2 N | target met (mean <= 0.5 log2 N) |")
    print("|---:|---:|---:|---:|---:|---|")
    for n, hops in model.items():
        mean = sum(hops) / len(hops)
        print(
            f"| {n} | {mean:.2f} | {percentile(hops, 0.99):.0f} | {max(hops)} | "
            f"{0.5 * math.log2(n):.2f} | {'yes' if mean <= 0.5 * math.log2(n) else 'no'} |",
            flush=True,
        )
    real = []
    for n in [int(x) for x in args.real.split(",") if x]:
        result = simulated_ring(n, args.aors, args.seed)
        real.append(result)
        print(f"# simulated ring of {n}: {result}", flush=True)
    print("\n## Simulated rings (real nodes, in-memory links, one fake clock)\n")
    print(
        "| N | join until tables exact, mean/max (sim s) | lookups per CPU s | idle B/s/node (RELOAD) | "
        "idle B/s/node (wire est.) | memory/node KiB | memory/registration incl. replicas KiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in real:
        print(
            f"| {r['peers']} | {r['join_mean_s']}/{r['join_convergence_s']} | {r['lookups_per_cpu_s']} | "
            f"{r['idle_bytes_per_node_s']} | {r['idle_wire_bytes_per_node_s']} | "
            f"{r['memory_per_node_kib']} | {r['memory_per_registration_kib']} |"
        )
    for r in real:
        ordered = sorted(r["idle_by_method"].items(), key=lambda item: -item[1])
        print(f"idle traffic by method at N={r['peers']} (B/s/node): {dict(ordered)}")
        print(
            f"memory per registration at N={r['peers']} by allocating file (bytes): "
            f"{r['memory_per_registration_by_file']}"
        )
    if args.store_aors:
        # The pass with certificates at a tenth of the AORs keeps the bench
        # under five minutes; the bytes per AOR do not depend on the count
        # (20,000 and 100,000 registrations differ by 3%).
        stores = [
            store_memory(args.store_aors, args.seed, False),
            store_memory(max(1, args.store_aors // 10), args.seed, True),
        ]
        print("\n## Memory of the three stores holding each AOR (responsible peer + 2 replicas)\n")
        print(
            "| AORs | values per AOR | bytes per AOR, 3 copies | StoreReq bytes (1 copy) | "
            "CPU us per store (contended) |"
        )
        print("|---:|---|---:|---:|---:|")
        for r in stores:
            what = "registration + user certificate" if r["with_certificates"] else "registration"
            print(
                f"| {r['aors']:,} | {what} | {r['bytes_per_aor']:,} | "
                f"{r['encoded_bytes_per_aor']} | {r['store_cpu_us']} |"
            )
        for r in stores:
            print(
                f"stores, certificates={r['with_certificates']}, by line (bytes/AOR): {r['by_line']}"
            )
    path = plot(model, real)
    if path is not None:
        print(f"\nplot: {path}")
    print(f"elapsed_s={time.perf_counter() - began:.0f}")


if __name__ == "__main__":
    main()
