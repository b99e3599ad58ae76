"""
SIP load through a ring of three super-nodes, with the shared SIPp scenarios.

Starts three ``twistd`` processes on loopback, all with SIP on free UDP
ports and authentication off (``--sip-trusted-network``): A, the bootstrap
that founds the ring, and the peers B and C.  Once every node knows its
true predecessor and successor, the 1000 callees of the shared
``callees.csv`` are registered at A (``register_csv.xml``) with Contact
pointing at a SIPp callee (``uas.xml``), so their bindings live in the DHT
and B must look them up through the overlay.  Then:

* latency: the shared ``uac.xml`` calls the callees through B at
  ``--call-rate`` calls/s for ``--latency-seconds`` with ``-trace_msg``;
  INVITE->200 p50/p99 come from the message log's microsecond timestamps
  (the method of the shared ladder's probe), with failed calls and
  retransmissions;
* a call ladder through B and a REGISTER ladder (``register.xml``, a new
  AOR every REGISTER) at A, each step run and judged by the shared
  ``sipp_ladder.py`` (PASS: no failed call, no retransmission, 95 % of the
  target rate, and its 20 calls/s probe clean).

Prints a markdown table and a summary line; asserts nothing.  CPU columns
are % of one core per super-node over the step.  The INVITE->200 time
includes the SIPp callee's own turnaround (about 1 ms).

Usage::

    P2PSIP_SHARED=/path/to/shared .venv/bin/python bench/sip_ring_load.py \
        --call-rates 100,200,300,400 --register-rates 500,1000,2000,2500 --duration 6
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from super_nodes import (
    DOMAIN,
    SuperNode,
    load_sipp_ladder,
    ring_converged,
    start_super_node,
    stop_process,
)

from p2psip.testing import free_port, shared_dir

CONVERGE_SECONDS = 180.0
LATENCY_TARGET_P50_MS = 5.0
LATENCY_TARGET_P99_MS = 50.0


def start_ring(
    work: Path, started: list[SuperNode], extra: tuple[str, ...] = ()
) -> tuple[SuperNode, SuperNode, SuperNode]:
    """A founds the ring, B and C join it (``extra``: options for all three); returns once converged."""
    a = start_super_node(work / "A", free_port(socket.SOCK_DGRAM), "p2psip-bootstrap", [*extra])
    started.append(a)
    peers = []
    for name in ("B", "C"):
        peer = start_super_node(
            work / name,
            free_port(socket.SOCK_DGRAM),
            "p2psip-peer",
            ["--bootstrap", a.overlay_endpoint, *extra],
        )
        started.append(peer)
        peers.append(peer)
    b, c = peers
    began = time.monotonic()
    while not ring_converged([a, b, c]):
        for node in (a, b, c):
            if node.process.poll() is not None:
                raise SystemExit(f"super-node {node.directory.name} exited; see {node.log_path}")
        if time.monotonic() - began > CONVERGE_SECONDS:
            raise SystemExit(
                f"the ring did not converge within {CONVERGE_SECONDS:g} s; see the logs under {work}"
            )
        time.sleep(0.5)
    print(
        f"# ring converged in {time.monotonic() - began:.1f} s: A pid {a.process.pid} (SIP {a.sip_port}), "
        f"B pid {b.process.pid} (SIP {b.sip_port}), C pid {c.process.pid} (SIP {c.sip_port})",
        flush=True,
    )
    return a, b, c


def ladder_settings(
    args: argparse.Namespace, mode: str, port: int, uas_pid: int
) -> types.SimpleNamespace:
    """The attributes the shared ladder's step runner, UAS and callee registration read."""
    return types.SimpleNamespace(
        mode=mode,
        host=DOMAIN,
        port=port,
        client_port=args.client_port,
        uas_port=args.client_port + 10,
        duration=args.duration,
        pause_ms=100,
        callees=str(shared_dir() / "anchors" / "callees.csv"),
        recv_timeout_ms=10000,
        probe_rate=20,
        keep_logs=False,
        max_p99_ms=0,
        _uas_pid=uas_pid,
    )


def cpu_percentages(
    ladder: Any, nodes: list[SuperNode], before: list[float], wall_seconds: float
) -> list[float]:
    return [
        round(100.0 * (ladder.tree_cpu_seconds(node.process.pid) - start) / wall_seconds, 1)
        for node, start in zip(nodes, before)
    ]


def measure_latency(
    ladder: Any, args: argparse.Namespace, b: SuperNode, nodes: list[SuperNode], work: Path
) -> dict[str, Any]:
    """Calls through B at a fixed rate, every message logged with its microsecond timestamp."""
    directory = work / "latency"
    directory.mkdir(parents=True, exist_ok=True)
    settings = ladder_settings(args, "call", b.sip_port, 0)
    count = int(args.call_rate * args.latency_seconds)
    command = ladder.scenario_args(settings, "latency") + [
        f"{DOMAIN}:{b.sip_port}",
        "-i",
        DOMAIN,
        "-nostdin",
        "-buff_size",
        "4194304",
        "-recv_timeout",
        "10000",
        "-timeout",
        f"{int(args.latency_seconds * 3 + 30)}s",
        "-p",
        str(args.client_port),
        "-r",
        str(args.call_rate),
        "-rp",
        "1000",
        "-m",
        str(count),
        "-l",
        str(max(1000, 3 * args.call_rate)),
        "-trace_stat",
        "-stf",
        "stat.csv",
        "-fd",
        "1",
        "-trace_msg",
        "-message_file",
        "msg.log",
        "-trace_err",
        "-error_file",
        "errors.log",
    ]
    before = [ladder.tree_cpu_seconds(node.process.pid) for node in nodes]
    exit_code, wall_seconds, _ = ladder.run_sipp(
        command, str(directory), args.latency_seconds * 3 + 40
    )
    cpu = cpu_percentages(ladder, nodes, before, wall_seconds)
    stats = ladder.last_stats(str(directory / "stat.csv"))
    latencies = ladder.msglog_latencies(str(directory / "msg.log"), "INVITE")
    successful = ladder._int(stats, "SuccessfulCall(C)")
    failed = ladder._int(stats, "FailedCall(C)")
    retransmissions = ladder._int(stats, "Retransmissions(C)")
    try:
        achieved = float(stats.get("CallRate(C)", "0"))
    except ValueError:
        achieved = 0.0
    return {
        "target_rate": args.call_rate,
        "achieved_rate": round(achieved, 1),
        "successful": successful,
        "failed": failed,
        "retransmissions": retransmissions,
        "samples": len(latencies),
        "p50_ms": ladder.r3(ladder.pct(latencies, 50)),
        "p99_ms": ladder.r3(ladder.pct(latencies, 99)),
        "max_ms": ladder.r3(latencies[-1] if latencies else None),
        "cpu": cpu,
        "pass": (
            exit_code == 0
            and failed == 0
            and retransmissions == 0
            and successful == count
            and achieved >= 0.95 * args.call_rate
        ),
    }


def run_ladder(
    ladder: Any,
    args: argparse.Namespace,
    mode: str,
    rates: list[int],
    target: SuperNode,
    nodes: list[SuperNode],
    uas_pid: int,
    work: Path,
) -> list[dict[str, Any]]:
    """One ladder with the shared step runner; stops at the first failing step unless --keep-going."""
    settings = ladder_settings(args, mode, target.sip_port, uas_pid)
    results = []
    for rate in rates:
        time.sleep(args.settle)
        before = [ladder.tree_cpu_seconds(node.process.pid) for node in nodes]
        began = time.monotonic()
        result = ladder.run_step(settings, rate, str(work / f"{mode}_{rate}"), target.process.pid)
        result["cpu"] = cpu_percentages(ladder, nodes, before, time.monotonic() - began)
        results.append(result)
        print(
            f"# {mode} through {target.directory.name} rate={rate} achieved={result['achieved_rate']} "
            f"ok={result['successful']} failed={result['failed']} retrans={result['retransmissions']} "
            f"probe_p50/p99={result.get('probe_p50_ms')}/{result.get('probe_p99_ms')} ms "
            f"-> {'PASS' if result['pass'] else 'FAIL'}",
            flush=True,
        )
        if not result["pass"] and not args.keep_going:
            break
    return results


def show(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(
    latency: dict[str, Any], calls: list[dict[str, Any]], registers: list[dict[str, Any]]
) -> None:
    print(
        "\n| test | via | target/s | achieved/s | ok | failed | retrans | INVITE/REGISTER->200 p50 ms "
        "| p99 ms | CPU A % | CPU B % | CPU C % | result |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def row(test: str, via: str, r: dict[str, Any], p50: Any, p99: Any) -> None:
        cpu_a, cpu_b, cpu_c = r["cpu"]
        print(
            f"| {test} | {via} | {r['target_rate']} | {r['achieved_rate']} | {r['successful']} | {r['failed']} "
            f"| {r['retransmissions']} | {show(p50)} | {show(p99)} | {cpu_a} | {cpu_b} | {cpu_c} "
            f"| {'PASS' if r['pass'] else 'FAIL'} |"
        )

    row(
        f"calls, -trace_msg ({latency['samples']} samples)",
        "B",
        latency,
        latency["p50_ms"],
        latency["p99_ms"],
    )
    for r in calls:
        row("call ladder (probe)", "B", r, r.get("probe_p50_ms"), r.get("probe_p99_ms"))
    for r in registers:
        row("REGISTER ladder (probe)", "A", r, r.get("probe_p50_ms"), r.get("probe_p99_ms"))


def max_pass(results: list[dict[str, Any]]) -> int:
    return max((r["target_rate"] for r in results if r["pass"]), default=0)


def rate_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def stop_uas(uas: subprocess.Popen[bytes]) -> None:
    stop_process(uas, grace_seconds=5)


def stop_leftover_children(ladder: Any) -> None:
    """SIPp runs the shared ladder started and an interruption left behind, found by pid."""
    for pid in ladder.process_tree(os.getpid())[1:]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def exit_on_signal(number: int, frame: Any) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every started process is stopped."""
    raise SystemExit(f"stopped by signal {number}")


def main() -> None:
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, exit_on_signal)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--call-rate", type=int, default=50, help="calls/s of the latency run")
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of the latency run"
    )
    parser.add_argument(
        "--call-rates", default="100,200,300,400", help="call ladder through B, calls/s"
    )
    parser.add_argument(
        "--register-rates", default="500,1000,2000,2500", help="REGISTER ladder at A, per second"
    )
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per ladder step")
    parser.add_argument(
        "--settle", type=float, default=2.0, help="idle seconds before every ladder step"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="run every step even after one fails"
    )
    parser.add_argument(
        "--client-port",
        type=int,
        default=0,
        help="SIPp ports start here: load, probe +4, callee +10 (default: free)",
    )
    parser.add_argument(
        "--work", help="keep SIPp and super-node logs here (default: a temporary folder)"
    )
    args = parser.parse_args()
    ladder = load_sipp_ladder()
    if not args.client_port:
        args.client_port = free_port(socket.SOCK_DGRAM)
    nodes: list[SuperNode] = []
    uas: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="p2psip-sip-ring-load-") as scratch:
        work = Path(args.work or scratch).resolve()
        work.mkdir(parents=True, exist_ok=True)
        try:
            a, b, c = start_ring(work, nodes)
            uas = ladder.start_uas(ladder_settings(args, "call", a.sip_port, 0), str(work))
            registered = ladder.register_callees(
                ladder_settings(args, "call", a.sip_port, 0), str(work)
            )
            print(
                f"# registered {registered} callees at A -> SIPp callee {DOMAIN}:{args.client_port + 10} "
                f"(pid {uas.pid})",
                flush=True,
            )
            ring = [a, b, c]
            latency = measure_latency(ladder, args, b, ring, work)
            print(
                f"# latency through B at {args.call_rate}/s: p50={latency['p50_ms']} ms p99={latency['p99_ms']} ms "
                f"failed={latency['failed']} retrans={latency['retransmissions']}",
                flush=True,
            )
            calls = run_ladder(
                ladder, args, "call", rate_list(args.call_rates), b, ring, uas.pid, work
            )
            registers = run_ladder(
                ladder, args, "register", rate_list(args.register_rates), a, ring, uas.pid, work
            )
        finally:
            if uas is not None:
                stop_uas(uas)
            for node in reversed(nodes):
                stop_process(node.process)
            stop_leftover_children(ladder)
    print_table(latency, calls, registers)
    met = (
        latency["p50_ms"] is not None
        and latency["p50_ms"] < LATENCY_TARGET_P50_MS
        and latency["p99_ms"] is not None
        and latency["p99_ms"] < LATENCY_TARGET_P99_MS
    )
    print(
        f"p2psip_ring3 invite_p50_ms_at_{args.call_rate}={show(latency['p50_ms'])} "
        f"invite_p99_ms_at_{args.call_rate}={show(latency['p99_ms'])} failed={latency['failed']} "
        f"retrans={latency['retransmissions']} calls_max_rate={max_pass(calls)} "
        f"register_max_rate={max_pass(registers)} "
        f"target_p50<{LATENCY_TARGET_P50_MS:g}_p99<{LATENCY_TARGET_P99_MS:g}={'met' if met else 'missed'}",
        flush=True,
    )


if __name__ == "__main__":
    main()
