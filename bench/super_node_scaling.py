"""
A super-node in a ring against Kamailio, in one run, with the ratios printed.

Starts a ring on loopback: A (the bootstrap) and the peers B, C, D (the
ring of four the measured super-node B belongs to), E (Digest
authentication) and F (``--workers 2``); all but E run with
``--sip-trusted-network``.  The 1000 callees of the shared ``callees.csv``
are registered at A with Contact pointing at a SIPp callee, so the other
super-nodes find them through the overlay (with ``--direct-contacts any``,
the default, the callees registered from their own address and B and F
call them straight, as they would public phones; ``off`` sends every call
through A too); a REGISTER at B stores its
record at whichever member is responsible for the AOR (elsewhere, mostly)
plus its replicas.  Then, with the shared ``sipp_ladder.py`` steps (PASS:
no failed call, no retransmission, 95 % of the target rate):

* INVITE->200 p50/p99 through B at ``--call-rate`` calls/s, first calls
  (every callee once, none in B's location cache) and again at once
  (cached), from SIPp's microsecond message log;
* a REGISTER ladder at B (a new AOR every REGISTER), the Digest REGISTER
  ladder at E (``register_digest.xml``: REGISTER, 401, REGISTER, 200), the
  REGISTER ladder at F (2 workers), and call ladders through B and F (at
  F SIPp sends each call from a socket of its own, ``-t un``: the kernel
  gives a shared port's datagrams to a worker by the sender's address, so
  one socket would be one phone on one worker);
* Kamailio with the shared ``kamailio.cfg`` (2 UDP workers), started here:
  the same REGISTER and call ladders and the same latency run.

CPU is the super-nodes' (all processes of the ring, each with its
children) and Kamailio's, from ``/proc``; "us per request" is that CPU
over the requests of the highest passing step.  Everything shares the
machine's cores with SIPp: the figures are contended.  Prints a markdown
table and one summary line; asserts nothing.

Usage::

    P2PSIP_SHARED=/path/to/shared .venv/bin/python bench/super_node_scaling.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import json
from pathlib import Path
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sip_load import DIGEST_SCENARIO, make_users
from sip_ring_load import (
    ladder_settings,
    measure_latency,
    stop_leftover_children,
    stop_uas,
)
from super_nodes import (
    DOMAIN,
    SuperNode,
    load_sipp_ladder,
    start_super_node,
    stop_process,
    twist_command,
)

from p2psip.cli.admin import AdminError
from p2psip.testing import free_port, repository_root, shared_dir

CONVERGE_SECONDS = 180.0
KAMAILIO_PORT = 5070  # kamailio.cfg listens there


def rate_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on loopback (worker K uses PORT+K)."""
    while True:
        base = free_port()
        try:
            for offset in range(count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base


def free_udp_and_tcp_port() -> int:
    while True:
        port = free_port(socket.SOCK_DGRAM)
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port


def start_workers(work: Path, bootstrap: SuperNode, workers: int, extra: list[str]) -> SuperNode:
    """F: a peer with ``--workers``, its supervisor's pid measured (the workers are its children)."""
    directory = work / "F"
    directory.mkdir(parents=True)
    overlay_port = consecutive_free_ports(workers)
    http_port = consecutive_free_ports(workers + 1)
    sip_port = free_udp_and_tcp_port()
    command = [
        *twist_command(directory / "twistd.log"),
        "p2psip-peer",
        *("--overlay-name", DOMAIN, "--insecure", "--sip-trusted-network"),
        *("--sip-rate-limit", "0", "--bootstrap", bootstrap.overlay_endpoint),
        *("--overlay", f"tcp:{overlay_port}:interface=127.0.0.1"),
        *("--http", f"tcp:{http_port}:interface=127.0.0.1"),
        *("--data-dir", str(directory / "data")),
        *("--sip", f"udp:{sip_port}:interface=127.0.0.1"),
        *("--workers", str(workers)),
        *extra,
    ]
    process = subprocess.Popen(
        command,
        env=dict(os.environ, PYTHONPATH=str(repository_root())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return SuperNode("p2psip-peer", directory, sip_port, overlay_port, http_port, process)


def statuses(nodes: list[SuperNode], supervisor: SuperNode) -> list[dict[str, Any]] | None:
    """The /status of every ring member: the single-process nodes', then every worker's."""
    try:
        documents: list[dict[str, Any]] = [node.admin().status() for node in nodes]
        url = f"http://127.0.0.1:{supervisor.http_port}/status"
        with urllib.request.urlopen(url, timeout=3) as answer:
            workers = json.loads(answer.read())["workers"]
    except (AdminError, OSError, ValueError, KeyError):
        return None
    for worker in workers:
        if "status" not in worker:
            return None
        documents.append(worker["status"])
    return documents


def converged(nodes: list[SuperNode], supervisor: SuperNode) -> bool:
    """Every member joined, with its true first predecessor and successor."""
    documents = statuses(nodes, supervisor)
    if documents is None:
        return False
    ring = sorted(document["node_id"] for document in documents)
    for document in documents:
        if document.get("state") != "joined":
            return False
        index = ring.index(document["node_id"])
        if not document.get("predecessors") or not document.get("successors"):
            return False
        if document["predecessors"][0]["node_id"] != ring[index - 1]:
            return False
        if document["successors"][0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


def start_ring(work: Path, started: list[SuperNode], args: argparse.Namespace) -> dict[str, Any]:
    direct = ["--sip-direct-contacts", args.direct_contacts]
    a = start_super_node(work / "A", free_port(socket.SOCK_DGRAM), "p2psip-bootstrap", direct)
    started.append(a)
    nodes = {"A": a}
    users, injection = make_users(work, args.users)
    for name in ("B", "C", "D", "E"):
        node = start_super_node(
            work / name,
            free_port(socket.SOCK_DGRAM),
            "p2psip-peer",
            ["--bootstrap", a.overlay_endpoint, *direct],
            auth=name == "E",
            users=users if name == "E" else None,
        )
        started.append(node)
        nodes[name] = node
    f = start_workers(work, a, args.workers, direct)
    started.append(f)
    nodes["F"] = f
    began = time.monotonic()
    members = [nodes[name] for name in "ABCDE"]
    while not converged(members, f):
        for node in started:
            if node.process.poll() is not None:
                raise SystemExit(f"super-node {node.directory.name} exited; see {node.log_path}")
        if time.monotonic() - began > CONVERGE_SECONDS:
            raise SystemExit(f"the ring did not converge within {CONVERGE_SECONDS:g} s ({work})")
        time.sleep(0.5)
    print(
        f"# ring of {5 + args.workers} members converged in {time.monotonic() - began:.1f} s "
        f"(A bootstrap, B C D E peers, F with {args.workers} workers); "
        f"--sip-direct-contacts {args.direct_contacts}",
        flush=True,
    )
    return {"nodes": nodes, "injection": injection}


def start_kamailio(work: Path) -> subprocess.Popen[bytes]:
    """Kamailio as the shared anchor runs it: 2 UDP workers, foreground, its own pid."""
    run = work / "kamailio"
    run.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", KAMAILIO_PORT))
        except OSError:
            raise SystemExit(f"UDP port {KAMAILIO_PORT} (kamailio.cfg's) is in use") from None
    config = shared_dir() / "anchors" / "kamailio.cfg"
    log = (run / "kamailio.log").open("wb")
    process = subprocess.Popen(
        ["kamailio", "-f", str(config), "-DD", "-E", "-n", "2", "-m", "1024", "-M", "32"]
        + ["-Y", str(run)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", KAMAILIO_PORT))
        except OSError:
            time.sleep(0.5)
            return process  # bound by kamailio
        if process.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(process)
    raise SystemExit(f"kamailio did not start; see {run / 'kamailio.log'}")


def ladder(
    sipp: Any,
    args: argparse.Namespace,
    mode: str,
    rates: list[int],
    port: int,
    pids: list[int],
    uas_pid: int,
    work: Path,
    label: str,
) -> dict[str, Any]:
    """Run one ladder; the highest pass and the CPU per request at it (all ``pids``)."""
    settings = ladder_settings(args, mode, port, uas_pid)
    best: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    for rate in rates:
        time.sleep(args.settle)
        before = sum(sipp.tree_cpu_seconds(pid) for pid in pids)
        result = sipp.run_step(settings, rate, str(work / f"{label}_{rate}"), pids[0])
        used = sum(sipp.tree_cpu_seconds(pid) for pid in pids) - before
        requests = result["successful"] + int(args.probe_rate * max(1.0, args.duration - 1.0))
        result["cpu_us_per_request"] = round(1e6 * used / requests) if requests else None
        print(
            f"# {label} rate={rate} achieved={result['achieved_rate']} ok={result['successful']} "
            f"failed={result['failed']} retrans={result['retransmissions']} "
            f"cpu/request={result['cpu_us_per_request']} us -> {'PASS' if result['pass'] else 'FAIL'}",
            flush=True,
        )
        first = first or result
        if not result["pass"]:
            break
        best = result
    return {
        "label": label,
        "max": best["target_rate"] if best else 0,
        "at_max": best,
        "first": first,
    }


def digest(sipp: Any, injection: Path) -> Any:
    """The ladder's scenario swapped for Digest REGISTER (as bench/sip_load.py does)."""
    original = sipp.scenario_args

    def scenario(a: Any, prefix: str) -> list[str]:
        if a.mode != "register":
            return list(original(a, prefix))
        return [
            "-sf",
            str(DIGEST_SCENARIO),
            "-inf",
            str(injection),
            "-auth_uri",
            DOMAIN,
            *("-key", "domain", DOMAIN, "-key", "contact_port", "5999"),
        ]

    sipp.scenario_args = scenario
    return original


@contextlib.contextmanager
def one_socket_per_call(sipp: Any) -> Iterator[None]:
    """
    SIPp sends each call from a socket of its own (``-t un``) meanwhile.

    ``--workers`` shares the SIP port with ``SO_REUSEPORT``, and the
    kernel picks a worker by the sender's address and port: one SIPp
    socket would be one phone, all on one worker.  From a socket per call
    the load spreads over the workers as many phones' would.
    """
    original = sipp.scenario_args

    def spread(a: Any, prefix: str) -> list[str]:
        return [*original(a, prefix), "-t", "un", "-max_socket", "10000"]

    sipp.scenario_args = spread
    try:
        yield
    finally:
        sipp.scenario_args = original


def latency_pair(
    sipp: Any, args: argparse.Namespace, target: SuperNode, pids: list[SuperNode], work: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    first = measure_latency(sipp, args, target, pids, work / "first")
    cached = measure_latency(sipp, args, target, pids, work / "cached")
    return first, cached


def measured_first(node: SuperNode, ring: list[SuperNode]) -> list[int]:
    """The measured node's pid first (the ladder samples it), then the rest of the ring."""
    return [node.process.pid, *(n.process.pid for n in ring if n is not node)]


def show(value: Any) -> str:
    return "-" if value is None else str(value)


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f}"


def main() -> None:
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(f"stopped by signal {number}"))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--register-rates", default="250,500,750,1000")
    parser.add_argument("--digest-rates", default="100,200,300")
    parser.add_argument("--worker-register-rates", default="250,500,750,1000,1500")
    parser.add_argument("--call-rates", default="100,200,400,600,800")
    parser.add_argument(
        "--drain",
        type=float,
        default=8.0,
        help="idle seconds between ladders, so a failed step's overlay backlog is gone",
    )
    parser.add_argument("--kamailio-register-rates", default="4000,8000,10000")
    parser.add_argument("--kamailio-call-rates", default="1000,1500")
    parser.add_argument("--call-rate", type=int, default=50, help="calls/s of the latency runs")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per ladder step")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--probe-rate", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--direct-contacts",
        choices=("any", "off"),
        default="any",
        help="the members' --sip-direct-contacts: any (the loopback callees at A are called "
        "straight from B and F, as public phones would be) or off (every call crosses A)",
    )
    parser.add_argument("--users", type=int, default=20000, help="Digest users at E")
    parser.add_argument("--client-port", type=int, default=0)
    parser.add_argument("--work", help="keep logs here (default: a temporary folder)")
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is missing (apt-get install sip-tester)")
    kamailio_present = shutil.which("kamailio") is not None
    sipp = load_sipp_ladder()
    if not args.client_port:
        args.client_port = free_port(socket.SOCK_DGRAM)
    began = time.monotonic()
    started: list[SuperNode] = []
    uas: subprocess.Popen[bytes] | None = None
    kamailio: subprocess.Popen[bytes] | None = None
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="p2psip-super-node-scaling-") as scratch:
        work = Path(args.work or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        try:
            ring = start_ring(work, started, args)
            nodes: dict[str, SuperNode] = ring["nodes"]
            a, b, e, f = nodes["A"], nodes["B"], nodes["E"], nodes["F"]
            uas = sipp.start_uas(ladder_settings(args, "call", a.sip_port, 0), str(work))
            sipp.register_callees(ladder_settings(args, "call", a.sip_port, 0), str(work))
            first, cached = latency_pair(sipp, args, b, started, work / "latency_b")
            rows["latency_first"], rows["latency_cached"] = first, cached
            print(
                f"# INVITE->200 through B, first {first['p50_ms']}/{first['p99_ms']} ms, "
                f"cached {cached['p50_ms']}/{cached['p99_ms']} ms (p50/p99)",
                flush=True,
            )
            rows["calls"] = ladder(
                sipp,
                args,
                "call",
                rate_list(args.call_rates),
                b.sip_port,
                measured_first(b, started),
                uas.pid,
                work,
                "call_B",
            )
            with one_socket_per_call(sipp):
                rows["workers_calls"] = ladder(
                    sipp,
                    args,
                    "call",
                    rate_list(args.call_rates),
                    f.sip_port,
                    measured_first(f, started),
                    uas.pid,
                    work,
                    f"call_F_{args.workers}_workers",
                )
            time.sleep(args.drain)
            rows["register"] = ladder(
                sipp,
                args,
                "register",
                rate_list(args.register_rates),
                b.sip_port,
                measured_first(b, started),
                uas.pid,
                work,
                "register_B",
            )
            original = digest(sipp, ring["injection"])
            time.sleep(args.drain)
            try:
                rows["digest"] = ladder(
                    sipp,
                    args,
                    "register",
                    rate_list(args.digest_rates),
                    e.sip_port,
                    measured_first(e, started),
                    uas.pid,
                    work,
                    "register_digest_E",
                )
            finally:
                sipp.scenario_args = original
            time.sleep(args.drain)
            with one_socket_per_call(sipp):
                rows["workers_register"] = ladder(
                    sipp,
                    args,
                    "register",
                    rate_list(args.worker_register_rates),
                    f.sip_port,
                    measured_first(f, started),
                    uas.pid,
                    work,
                    f"register_F_{args.workers}_workers",
                )
            stop_uas(uas)
            uas = None
            for node in reversed(started):
                stop_process(node.process)
            started.clear()
            if kamailio_present:
                kamailio = start_kamailio(work)
                fake = SuperNode("kamailio", work / "kamailio", KAMAILIO_PORT, 0, 0, kamailio)
                uas = sipp.start_uas(ladder_settings(args, "call", KAMAILIO_PORT, 0), str(work))
                sipp.register_callees(ladder_settings(args, "call", KAMAILIO_PORT, 0), str(work))
                rows["kamailio_latency"] = measure_latency(
                    sipp, args, fake, [fake], work / "latency_kamailio"
                )
                rows["kamailio_register"] = ladder(
                    sipp,
                    args,
                    "register",
                    rate_list(args.kamailio_register_rates),
                    KAMAILIO_PORT,
                    [kamailio.pid],
                    uas.pid,
                    work,
                    "register_kamailio",
                )
                rows["kamailio_calls"] = ladder(
                    sipp,
                    args,
                    "call",
                    rate_list(args.kamailio_call_rates),
                    KAMAILIO_PORT,
                    [kamailio.pid],
                    uas.pid,
                    work,
                    "call_kamailio",
                )
        finally:
            if uas is not None:
                stop_uas(uas)
            for node in reversed(started):
                stop_process(node.process)
            if kamailio is not None:
                stop_process(kamailio)
            stop_leftover_children(sipp)
    report(rows, args, time.monotonic() - began)


def report(rows: dict[str, Any], args: argparse.Namespace, elapsed: float) -> None:
    kam_reg = rows.get("kamailio_register", {}).get("max")
    kam_call = rows.get("kamailio_calls", {}).get("max")
    kam_latency = rows.get("kamailio_latency", {})

    def cpu(row: dict[str, Any]) -> Any:
        """At the highest passing step; else at the first step, marked with a * (it failed)."""
        if row.get("at_max"):
            return row["at_max"].get("cpu_us_per_request")
        first = row.get("first") or {}
        value = first.get("cpu_us_per_request")
        return None if value is None else f"{value}* at {first.get('target_rate')}/s"

    print("\n## Super-node in a ring vs Kamailio (same run; contended: SIPp shares the cores)\n")
    print(
        "| measurement | p2psip | Kamailio | ratio | CPU us/request (ring total; * failed step) |"
    )
    print("|---|---:|---:|---:|---:|")
    table = [
        ("REGISTER/s at B (ring member, no auth)", rows["register"], kam_reg),
        ("REGISTER/s at E with Digest (REGISTER+401+REGISTER)", rows["digest"], None),
        (f"REGISTER/s at F, --workers {args.workers}", rows["workers_register"], kam_reg),
        ("calls/s through B", rows["calls"], kam_call),
        (f"calls/s through F, --workers {args.workers}", rows["workers_calls"], kam_call),
    ]
    for name, row, theirs in table:
        print(
            f"| {name} | {row['max']} | {show(theirs)} | {ratio(row['max'], theirs)} | {show(cpu(row))} |"
        )
    kam_cpu_reg = cpu(rows.get("kamailio_register", {}))
    kam_cpu_call = cpu(rows.get("kamailio_calls", {}))
    print(
        f"| Kamailio CPU us per REGISTER / per call | | {show(kam_cpu_reg)} / {show(kam_cpu_call)} | | |"
    )
    first, cached = rows["latency_first"], rows["latency_cached"]
    print(
        f"| INVITE->200 p50/p99 ms at {args.call_rate}/s through B, first call | "
        f"{show(first['p50_ms'])}/{show(first['p99_ms'])} | | | |"
    )
    print(
        f"| INVITE->200 p50/p99 ms at {args.call_rate}/s through B, cached | "
        f"{show(cached['p50_ms'])}/{show(cached['p99_ms'])} | "
        f"{show(kam_latency.get('p50_ms'))}/{show(kam_latency.get('p99_ms'))} | "
        f"{ratio(cached['p50_ms'], kam_latency.get('p50_ms'))} | |"
    )
    digest_ratio = ratio(rows["digest"]["max"], rows["register"]["max"])
    print(
        f"\np2psip_scaling register_b={rows['register']['max']} register_digest_e={rows['digest']['max']} "
        f"register_workers={rows['workers_register']['max']} calls_b={rows['calls']['max']} "
        f"calls_workers={rows['workers_calls']['max']} kamailio_register={show(kam_reg)} "
        f"kamailio_calls={show(kam_call)} ratio_register={ratio(rows['register']['max'], kam_reg)} "
        f"ratio_register_workers={ratio(rows['workers_register']['max'], kam_reg)} "
        f"ratio_calls_workers={ratio(rows['workers_calls']['max'], kam_call)} "
        f"digest_vs_noauth={digest_ratio} invite_first_p50/p99={show(first['p50_ms'])}/"
        f"{show(first['p99_ms'])} invite_cached_p50/p99={show(cached['p50_ms'])}/"
        f"{show(cached['p99_ms'])} kamailio_invite_p50/p99={show(kam_latency.get('p50_ms'))}/"
        f"{show(kam_latency.get('p99_ms'))} elapsed_s={elapsed:.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
