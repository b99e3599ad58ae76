"""
Goodput above saturation: one SIP super-node driven past its maximum REGISTER rate.

Starts one ``twistd p2psip-bootstrap`` (alone in its ring, SIP on a free
loopback UDP port, ``--sip-trusted-network``, the per-source limit off) and
drives it with SIPp (``bench/sipp/register_or_503.xml``: one REGISTER per
call with a new AOR; 200 or 503 ends it, unanswered ones are retransmitted
every 500 ms as phones do).  Outcomes are read from the node's ``/status``
(final responses by status), the event-loop lag from its overload status,
the node's CPU time from ``/proc``.  Every step gets a fresh node: each
step's AORs are new, and a node already holding the last step's would
measure that too; its ``--registrations-per-signer`` is raised above the
step's REGISTERs (all are signed by the node itself, and the default
10,000 would refuse the rest).

1. The maximum, found by a ladder: from ``--start-rate`` the offered rate
   doubles while the node completes a step cleanly (at least 97 % of the
   offered REGISTERs answered 200 and under 1 % refused), then
   ``--refine`` bisection steps between the last clean rate and the first
   unclean one.  The maximum is the best 200/s of a clean step.
2. Twice that rate, offered for the same time, to a node with the overload
   guard on (the defaults) and to one with it off
   (``--sip-overload-pending 0 --sip-overload-lag 0 --sip-overload-backlog 0``).
3. What a refusal costs: CPU microseconds per 200 on the last clean step,
   and per 503 on a node told to refuse everything
   (``--sip-overload-lag 1e-9``), at the maximum rate.  The 503 is answered
   statelessly before any transaction is made, so it should cost a small
   fraction of a REGISTER; if it did not, goodput would fall at 2x.

The target (issue 11): at 2x the maximum the node still completes at least
80 % of the maximum and answers the rest 503.  Prints figures, asserts
nothing; the host is shared, so rates vary between runs (the CPU costs per
request vary less: compare those while other work runs).

    .venv/bin/python bench/sip_overload.py [--start-rate 250] [--duration 10] [--refine 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from super_nodes import SuperNode, start_super_node, stop_process

from p2psip.testing import free_port

SCENARIO = Path(__file__).resolve().parent / "sipp" / "register_or_503.xml"
#: Share of refusals under which a step still counts for the maximum.
CLEAN_REFUSED_SHARE = 0.01
#: Share of offered REGISTERs a clean step must complete with 200.
CLEAN_OK_SHARE = 0.97


def register_outcomes(node: SuperNode) -> dict[str, int]:
    """REGISTER final responses sent so far, by status."""
    status: dict[str, Any] = node.admin().status()
    sip = status.get("sip", {})
    counts: dict[str, int] = sip.get("final_responses", {}).get("REGISTER", {})
    return {code: int(n) for code, n in counts.items()}


def overload_status(node: SuperNode) -> dict[str, Any]:
    status: dict[str, Any] = node.admin().status()
    overload: dict[str, Any] = status.get("sip", {}).get("overload", {})
    return overload


def run_sipp(
    node: SuperNode, rate: int, duration: float, work: Path, prefix: str, expires: int = 3600
) -> float:
    """Offer ``rate`` REGISTERs a second for ``duration`` seconds; returns SIPp's wall seconds."""
    total = int(rate * duration)
    command = [
        shutil.which("sipp") or "sipp",
        f"127.0.0.1:{node.sip_port}",
        "-sf",
        str(SCENARIO),
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-r",
        str(rate),
        "-rp",
        "1000",
        "-m",
        str(total),
        "-l",
        str(max(1000, 4 * rate)),
        "-key",
        "user_prefix",
        prefix,
        "-key",
        "contact_port",
        "5999",
        "-key",
        "expires",
        str(expires),
        "-buff_size",
        "4194304",
        "-recv_timeout",
        "8000",
        "-timeout",
        f"{int(duration * 3 + 30)}s",
        "-nostdin",
    ]
    started = time.monotonic()
    with open(work / f"sipp-{prefix}.log", "wb") as log:
        subprocess.run(command, cwd=work, stdout=log, stderr=subprocess.STDOUT, check=False)
    return time.monotonic() - started


def step(node: SuperNode, rate: int, duration: float, work: Path, prefix: str) -> dict[str, Any]:
    """One offered rate: 200s and 503s per second of offered time, and the worst smoothed lag."""
    before = register_outcomes(node)
    wall = run_sipp(node, rate, duration, work, prefix)
    after = register_outcomes(node)
    delta = {code: after.get(code, 0) - before.get(code, 0) for code in after}
    ok = delta.get("200", 0)
    refused = delta.get("503", 0)
    offered = int(rate * duration)
    overload = overload_status(node)
    return {
        "rate": rate,
        "offered": offered,
        "ok": ok,
        "refused": refused,
        "other": sum(delta.values()) - ok - refused,
        "unanswered": offered - sum(delta.values()),
        "goodput": ok / duration,
        "wall": wall,
        "lag_max": overload.get("loop_lag", {}).get("max_seconds"),
        "lag_p99": overload.get("loop_lag", {}).get("p99_seconds"),
        "signs": refusals_by_sign(overload.get("refused", {})),
    }


def refusals_by_sign(refused: dict[str, int]) -> str:
    """The node's 503s so far by the sign that fired ("REGISTER lag": 12 -> "lag 12"), or "-"."""
    signs: dict[str, int] = {}
    for key, count in refused.items():
        sign = key.rpartition(" ")[2]
        signs[sign] = signs.get(sign, 0) + count
    return ", ".join(f"{sign} {count}" for sign, count in sorted(signs.items())) or "-"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fresh_step(
    work: Path,
    rate: int,
    duration: float,
    name: str,
    extra: list[str] | None = None,
    node_options: list[str] | None = None,
) -> dict[str, Any]:
    """One step on a node of its own, with the node's CPU microseconds per final response."""
    # Every REGISTER is a new phone signed by this one node: without a
    # larger quota the store would refuse past 10,000 (Error_Data_Too_Large,
    # a 503), which is the quota working, not overload.
    quota = ["--registrations-per-signer", str(int(rate * duration * 2) + 10_000)]
    node = start_super_node(
        work / name,
        free_port(socket.SOCK_DGRAM),
        extra=[*quota, *(node_options or []), *(extra or [])],
    )
    try:
        before = cpu_seconds(node.process.pid)
        row = step(node, rate, duration, work, f"{name}u")
        spent = cpu_seconds(node.process.pid) - before
    finally:
        stop_process(node.process)
    answered = row["ok"] + row["refused"] + row["other"]
    row["cpu_us"] = 1e6 * spent / answered if answered else None
    return row


def clean(row: dict[str, Any]) -> bool:
    """Whether a ladder step was within the node's capacity."""
    offered: int = row["offered"]
    refused: int = row["refused"]
    ok: int = row["ok"]
    return refused <= CLEAN_REFUSED_SHARE * offered and ok >= CLEAN_OK_SHARE * offered


def print_row(label: str, row: dict[str, Any]) -> None:
    cpu = f"{row['cpu_us']:.0f}" if row.get("cpu_us") is not None else "-"
    print(
        f"| {label} | {row['rate']} | {row['offered']} | {row['ok']} | {row['refused']} | "
        f"{row['other']} | {row['unanswered']} | {row['goodput']:.0f} | {row['lag_p99']} | "
        f"{row['signs']} | {cpu} |",
        flush=True,
    )


def find_maximum(args: argparse.Namespace, work: Path) -> tuple[float, dict[str, Any] | None]:
    """The ladder: double while clean, then bisect; returns the best clean 200/s and its step."""
    best, best_row = 0.0, None
    low, high = 0, 0
    rate = args.start_rate
    while rate <= args.ceiling:
        row = fresh_step(work, rate, args.duration, f"ladder-{rate}", None, args.node_option)
        print_row("ladder", row)
        if not clean(row):
            high = rate
            break
        if row["goodput"] > best:
            best, best_row = row["goodput"], row
        low = rate
        rate *= 2
    for _ in range(args.refine if high else 0):
        if high - low <= max(10, low // 20):
            break
        rate = (low + high) // 2
        row = fresh_step(work, rate, args.duration, f"ladder-{rate}", None, args.node_option)
        print_row("ladder, bisecting", row)
        if clean(row):
            low = rate
            if row["goodput"] > best:
                best, best_row = row["goodput"], row
        else:
            high = rate
    if not high:
        print(
            f"# every step up to --ceiling {args.ceiling} was clean: the maximum is a lower bound"
        )
    return best, best_row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--start-rate", type=int, default=250)
    parser.add_argument("--ceiling", type=int, default=32000, help="highest rate the ladder tries")
    parser.add_argument("--refine", type=int, default=2, help="bisection steps after the doubling")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-rate", type=int, help="skip the ladder: the maximum is this rate")
    parser.add_argument(
        "--node-option",
        action="append",
        default=[],
        help="an option for every node, e.g. --node-option=--sip-overload-backlog=0.5 (repeatable)",
    )
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (make deps)")
    work = Path(tempfile.mkdtemp(prefix="p2psip-overload-"))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}; load average {os.getloadavg()[0]:.1f} "
        "(shared host: rates are contended)"
    )
    print(
        "| step | offered/s | offered | 200 | 503 | other | no answer | 200/s | lag p99 s "
        "| 503s by sign | node CPU us per answer |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    best_row = None
    if args.max_rate:
        best = float(args.max_rate)
    else:
        best, best_row = find_maximum(args, work)
    if best <= 0:
        raise SystemExit("no step completed cleanly: lower --start-rate")
    over = int(2 * best)
    results = {}
    for label, extra in (
        ("guard on", []),
        (
            "guard off",
            [
                "--sip-overload-pending",
                "0",
                "--sip-overload-lag",
                "0",
                "--sip-overload-backlog",
                "0",
            ],
        ),
    ):
        row = fresh_step(
            work, over, args.duration, f"over-{label[-3:].strip()}", extra, args.node_option
        )
        print_row(f"2x max, {label}", row)
        results[label] = row
    refusing = fresh_step(
        work,
        int(best),
        args.duration,
        "refuse-all",
        ["--sip-overload-pending", "0", "--sip-overload-lag", "1e-9"],
        args.node_option,
    )
    print_row("at max, refusing all", refusing)
    print()
    print(f"maximum (best clean ladder step): {best:.0f} REGISTER 200/s; offered at 2x: {over}/s")
    for label, row in results.items():
        share = 100 * row["refused"] / row["offered"] if row["offered"] else 0.0
        print(
            f"{label}: {row['goodput']:.0f} 200/s = {100 * row['goodput'] / best:.0f} % of the maximum;"
            f" {row['refused']} answered 503 ({share:.0f} % of offered), "
            f"{row['unanswered']} never answered"
        )
    if best_row is not None and best_row.get("cpu_us") and refusing.get("cpu_us"):
        print(
            f"node CPU per answer: {best_row['cpu_us']:.0f} us per 200 (clean step at "
            f"{best_row['rate']}/s), {refusing['cpu_us']:.0f} us per stateless 503 "
            f"({100 * refusing['cpu_us'] / best_row['cpu_us']:.0f} %)"
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
