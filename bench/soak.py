"""
Soak: hours of a normal day in minutes, on a ring of three super-nodes.

Starts A (the bootstrap) and peers B and C as ``twistd`` processes on
loopback (``bench/sip_ring_load.py``'s ring), a SIPp callee (the shared
``uas.xml``), then for ``--minutes`` (default 10):

* registrations: the shared ``callees.csv`` AORs registered at A with
  Contact at the callee, refreshed at half their expiry
  (``bench/sipp/register_refresh.xml`` at callees / (expiry / 2) per
  second);
* calls through B to those AORs (so every INVITE needs an overlay lookup
  and the hop to A), at 80 % of ``--max-call-rate`` (give the maximum
  ``bench/sip_ring_load.py`` measured on the same host; the default of 60
  is only a starting point), each lasting 1 to 20 s
  (``bench/sipp/uac_random_length.xml``).

Every ``--sample-seconds`` it reads each super-node's RSS and open file
descriptors (``/proc``) and its event-loop lag (``/status``).  It reports
failed calls (target 0), RSS growth from the end of the warm-up (the first
fifth) to the end (target < 10 %), open descriptors, and the loop lag's
p99 (the probe's last ten minutes).  It also prints the size of every
bounded or growing structure the nodes' ``/status`` reports (registrations,
transactions, the location cache against its cap, stored resources, links)
at the end of the warm-up and at the end: a cache still filling towards its
cap at the end means the warm-up was too short for it, and its share of the
RSS growth is warm-up, not a leak.  Prints figures, asserts nothing; the
host is shared, so note its load with the figures.

``--memory-report`` starts the nodes with ``--debug-memory-signal``,
signals each at the end of the warm-up and at the end, and prints each
node's last report: the object types that grew in between and what waits
in reference cycles.  Each report walks the heap and stalls the node's
loop for up to a second, so these runs also set ``--sip-overload-lag 0``
(and the loop lag's maximum includes the stall).  ``--trace-allocations
N`` adds ``PYTHONTRACEMALLOC=N`` and the allocation sites that grew; it
makes the nodes several times slower, too slow for the full call rate on
a shared 2-core host: use it with a lower ``--max-call-rate``.

    .venv/bin/python bench/soak.py [--minutes 10] [--max-call-rate 60] [--memory-report]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from itertools import takewhile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sip_ring_load import start_ring
from super_nodes import DOMAIN, SuperNode, finish_or_stop, stop_process

from p2psip.testing import free_port, shared_dir

HERE = Path(__file__).resolve().parent
EXPIRES_SECONDS = 120
#: Share of the run that is warm-up: RSS growth is measured after it.
WARM_UP_SHARE = 0.2


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loop_lag(node: SuperNode) -> dict[str, Any]:
    try:
        status: dict[str, Any] = node.admin().status()
    except Exception:
        return {}
    overload: dict[str, Any] = status.get("sip", {}).get("overload", {})
    lag: dict[str, Any] = dict(overload.get("loop_lag", {}))
    # The longest garbage collection of each generation: a full one on a
    # large heap shows up here and as loop lag.
    lag["gc_longest_seconds"] = overload.get("gc", {}).get("longest_seconds")
    return lag


#: /status keys whose numbers are sizes of structures (the rest are counters or settings).
SIZE_KEYS = frozenset(
    {
        "aors",
        "bindings",
        "entries",
        "max_entries",
        "node_addresses",
        "client_transactions",
        "server_transactions",
        "requests_in_progress",
        "pending_transactions",
        "resources",
        "pending",
        "active",
        "connections",
    }
)


def structure_sizes(node: SuperNode) -> dict[str, int]:
    """Every size in the node's ``/status`` (lists count as their length), by dotted path."""
    try:
        status: dict[str, Any] = node.admin().status()
    except Exception:
        return {}
    sizes: dict[str, int] = {}

    def walk(value: Any, path: str) -> None:
        leaf = path.rsplit(".", 1)[-1]
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(inner, f"{path}.{key}" if path else str(key))
        elif isinstance(value, list) and leaf in SIZE_KEYS:
            sizes[path] = len(value)
        elif isinstance(value, int) and not isinstance(value, bool) and leaf in SIZE_KEYS:
            sizes[path] = value

    walk(status, "")
    return sizes


def print_sizes(
    nodes: list[SuperNode], warm: list[dict[str, int]], end: list[dict[str, int]]
) -> None:
    print("\n| node | structure | after warm-up | at end |")
    print("|---|---|---|---|")
    for node, before, after in zip(nodes, warm, end):
        for path in sorted(set(before) | set(after)):
            if before.get(path) or after.get(path):
                print(
                    f"| {node.directory.name} | {path} | {before.get(path)} | {after.get(path)} |"
                )


def request_memory_reports(nodes: list[SuperNode]) -> None:
    for node in nodes:
        if node.process.poll() is None:
            os.kill(node.process.pid, signal.SIGUSR2)


def last_memory_report(node: SuperNode) -> str:
    """The last report in the node's log (the lines from its "memory report N" on)."""
    # twistd rotates its log at 1 MB: the report may be in an older file.
    logs = [node.log_path] + sorted(
        node.log_path.parent.glob(node.log_path.name + ".*"),
        key=lambda path: int(path.suffix[1:]) if path.suffix[1:].isdigit() else 0,
    )
    for log in logs:
        text = log.read_text(errors="replace")
        start = text.rfind("memory report ")
        if start >= 0:
            break
    else:
        return "(no memory report in the log)"
    lines = text[start:].splitlines()
    # twistd indents the continuation lines of one event with a tab.
    report = [lines[0]] + [line[1:] for line in takewhile(lambda x: x.startswith("\t"), lines[1:])]
    return "\n".join(report)


def sipp(
    scenario: Path, target: SuperNode, rate: float, total: int, work: Path, name: str, *extra: str
) -> subprocess.Popen[bytes]:
    directory = work / name
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        shutil.which("sipp") or "sipp",
        f"{DOMAIN}:{target.sip_port}",
        "-sf",
        str(scenario),
        "-i",
        DOMAIN,
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-r",
        f"{rate:g}",
        "-rp",
        "1000",
        "-m",
        str(total),
        "-l",
        "5000",
        "-nostdin",
        "-buff_size",
        "4194304",
        "-recv_timeout",
        "32000",
        "-trace_stat",
        "-stf",
        "stat.csv",
        "-fd",
        "10",
        "-trace_err",
        "-error_file",
        "errors.log",
        *extra,
    ]
    log = open(directory / "sipp.out", "wb")
    return subprocess.Popen(command, cwd=directory, stdout=log, stderr=subprocess.STDOUT)


def last_stats(path: Path) -> dict[str, str]:
    """The last row of a SIPp -trace_stat file, by column name."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if len(lines) < 2:
        return {}
    header = lines[0].rstrip(";").split(";")
    values = lines[-1].rstrip(";").split(";")
    return dict(zip(header, values))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-call-rate", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument(
        "--memory-report",
        action="store_true",
        help="print the object types that grew after the warm-up (a heap walk at each end)",
    )
    parser.add_argument(
        "--trace-allocations",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with the memory report, trace allocations (PYTHONTRACEMALLOC=FRAMES; much slower)",
    )
    args = parser.parse_args()
    args.memory_report = args.memory_report or args.trace_allocations > 0
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (make deps)")
    callees = shared_dir() / "anchors" / "callees.csv"
    uas_scenario = shared_dir() / "anchors" / "uas.xml"
    if not callees.exists():
        raise SystemExit(f"{callees} not found: point P2PSIP_SHARED at the shared test data folder")
    aors = sum(1 for line in callees.read_text().splitlines()[1:] if line.strip())
    work = Path(tempfile.mkdtemp(prefix="p2psip-soak-"))
    duration = args.minutes * 60
    call_rate = 0.8 * args.max_call_rate
    refresh_rate = aors / (EXPIRES_SECONDS / 2)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; load average {os.getloadavg()[0]:.1f} "
        f"(shared host); {args.minutes:g} min, calls {call_rate:g}/s of 1-20 s through B, "
        f"{aors} AORs at A refreshed every {EXPIRES_SECONDS // 2} s ({refresh_rate:g} REGISTER/s)",
        flush=True,
    )
    started: list[SuperNode] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        extra: tuple[str, ...] = ()
        if args.memory_report or args.trace_allocations:
            # A report stalls the loop for a second or more: not an overload.
            extra = ("--debug-memory-signal", "--sip-overload-lag", "0")
        if args.trace_allocations:
            os.environ["PYTHONTRACEMALLOC"] = str(args.trace_allocations)
        a, b, c = start_ring(work, started, extra)
        os.environ.pop("PYTHONTRACEMALLOC", None)
        uas_port = free_port(socket.SOCK_DGRAM)
        uas_dir = work / "uas"
        uas_dir.mkdir()
        uas = subprocess.Popen(
            [
                shutil.which("sipp") or "sipp",
                "-sf",
                str(uas_scenario),
                "-i",
                DOMAIN,
                "-p",
                str(uas_port),
                "-nostdin",
                "-buff_size",
                "4194304",
            ],
            cwd=uas_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        processes.append(uas)
        common = ("-inf", str(callees), "-key", "contact_port", str(uas_port))
        # Every AOR registered once, quickly, before the calls start.
        first = sipp(
            HERE / "sipp" / "register_refresh.xml",
            a,
            200,
            aors,
            work,
            "first-registration",
            *common,
            "-key",
            "expires",
            str(EXPIRES_SECONDS),
        )
        first.wait(120)
        refresh = sipp(
            HERE / "sipp" / "register_refresh.xml",
            a,
            refresh_rate,
            int(refresh_rate * duration),
            work,
            "refresh",
            *common,
            "-key",
            "expires",
            str(EXPIRES_SECONDS),
        )
        calls = sipp(
            HERE / "sipp" / "uac_random_length.xml",
            b,
            call_rate,
            int(call_rate * duration),
            work,
            "calls",
            "-inf",
            str(callees),
        )
        processes += [refresh, calls]
        nodes = [a, b, c]
        samples: list[tuple[float, list[int], list[int]]] = []
        warm_sizes: list[dict[str, int]] = []
        began = time.monotonic()
        while time.monotonic() - began < duration:
            time.sleep(args.sample_seconds)
            pids = [n.process.pid for n in nodes]
            samples.append(
                (time.monotonic() - began, [rss_kib(p) for p in pids], [open_fds(p) for p in pids])
            )
            if not warm_sizes and samples[-1][0] >= WARM_UP_SHARE * duration:
                warm_sizes = [structure_sizes(n) for n in nodes]
                if args.memory_report:
                    request_memory_reports(nodes)
        lags = [loop_lag(n) for n in nodes]
        end_sizes = [structure_sizes(n) for n in nodes]
        if args.memory_report:
            request_memory_reports(nodes)
        for process in (refresh, calls):
            finish_or_stop(process, 60)
        call_stats = last_stats(work / "calls" / "stat.csv")
        refresh_stats = last_stats(work / "refresh" / "stat.csv")
        print(
            "\n| node | RSS after warm-up MiB | RSS at end MiB | growth | open fds (max) | loop lag p99 s | max s "
            "| longest GC s (gen 0/1/2) |"
        )
        print("|---|---|---|---|---|---|---|---|")
        warm = next(s for s in samples if s[0] >= WARM_UP_SHARE * duration) if samples else None
        for index, node in enumerate(nodes):
            start_rss = warm[1][index] if warm else 0
            end_rss = samples[-1][1][index] if samples else 0
            growth = 100 * (end_rss - start_rss) / start_rss if start_rss else 0.0
            fds = max(s[2][index] for s in samples) if samples else 0
            lag = lags[index]
            print(
                f"| {node.directory.name} | {start_rss / 1024:.1f} | {end_rss / 1024:.1f} | "
                f"{growth:+.1f} % | {fds} | {lag.get('p99_seconds')} | {lag.get('max_seconds')} | "
                f"{' / '.join(str(v) for v in lag.get('gc_longest_seconds') or [])} |"
            )
        print_sizes(nodes, warm_sizes or [{} for _ in nodes], end_sizes)
        if args.memory_report:
            time.sleep(5)
            for node in nodes:
                print(f"\n### {node.directory.name}, from the end of the warm-up to the end\n")
                print(last_memory_report(node))
        print(
            f"\ncalls: {call_stats.get('SuccessfulCall(C)')} successful, "
            f"{call_stats.get('FailedCall(C)')} failed, {call_stats.get('Retransmissions(C)')} "
            f"retransmissions; registration refreshes: {refresh_stats.get('SuccessfulCall(C)')} "
            f"successful, {refresh_stats.get('FailedCall(C)')} failed (SIPp logs under {work})"
        )
    finally:
        for process in processes:
            stop_process(process, grace_seconds=10)
        for node in started:
            stop_process(node.process)


if __name__ == "__main__":
    main()
