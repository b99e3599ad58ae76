#!/usr/bin/env python3
"""
NAT traversal matrix in the style of Guha and Francis (IMC 2005), Table 2.

For each NAT pair (one NAT lab each, built in parallel) and each method
(forced with ``p2psip nat connect --methods M``, or ``--udp`` for UDP hole
punching), make N connections one after another and print the success
rate and the median connection-setup time (from ``connect()`` to a
verified connection, probes included) and echo round trip.

Needs root, iproute2 and nftables (``natlab preflight``).  Usage:

    sudo .venv/bin/python bench/nat_matrix.py [--attempts 20] [--filter drop]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from p2psip.nat import control_protocol
from p2psip.testing import mediator_client_secret, shared_dir

SECRET = "bench-secret"
CONTROL = "tcp:198.51.100.10:3479"

#: (label, nat A, nat B, tcp-liberal)
PAIRS = [
    ("none/eim", "none", "eim", False),
    ("eim/eim", "eim", "eim", False),
    ("eim/eim liberal", "eim", "eim", True),
    ("sequential/sequential", "sequential", "sequential", False),
    ("sequential/seq. liberal", "sequential", "sequential", True),
    ("eim/random", "eim", "random", False),
    ("random/random", "random", "random", False),
]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def cli(*args: str) -> list[str]:
    return python("-c", "import sys; from p2psip.cli import main; sys.exit(main())", *args)


def twistd(*args: str) -> list[str]:
    return python("-c", "from twisted.scripts.twistd import run; run()", *args)


def run_pair(
    natlab: str,
    prefix: str,
    label: str,
    nat_a: str,
    nat_b: str,
    liberal: bool,
    attempts: int,
    filter_mode: str,
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    def lab(*args: str) -> None:
        subprocess.run(python(natlab, *args), check=True, capture_output=True, timeout=60)

    up = ["up", "--prefix", prefix, "--nat-a", nat_a, "--nat-b", nat_b]
    if "none" in (nat_a, nat_b):
        up += [
            "--filter-a",
            "off" if nat_a == "none" else filter_mode,
            "--filter-b",
            "off" if nat_b == "none" else filter_mode,
        ]
    else:
        up += ["--filter", filter_mode]
    if liberal:
        up.append("--tcp-liberal")
    rows = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        lab(*up)

        def start(role: str, command: list[str]) -> None:
            processes.append(
                subprocess.Popen(
                    python(natlab, "exec", f"{prefix}-{role}", *command),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

        start(
            "pub",
            twistd(
                "-n",
                "--pidfile=",
                "p2psip-mediator",
                "--secret",
                SECRET,
                "--control",
                "tcp:3479",
                "--stun",
                "tcp:3478",
                "--stun",
                "udp:3478",
                "--http",
                "tcp:8087:interface=127.0.0.1",
            ),
        )
        start(
            "b",
            cli(
                "nat",
                "listen",
                "--mediator",
                CONTROL,
                "--id",
                "B",
                "--secret",
                mediator_client_secret(SECRET, "B"),
                "--wait",
                "20",
            ),
        )
        for method in control_protocol.TCP_METHODS + (control_protocol.UDP_PUNCH,):
            choice = ["--udp"] if method == control_protocol.UDP_PUNCH else ["--methods", method]
            done = subprocess.run(
                python(
                    natlab,
                    "exec",
                    f"{prefix}-a",
                    *cli(
                        "nat",
                        "connect",
                        "--mediator",
                        CONTROL,
                        "--id",
                        "A",
                        "--to",
                        "B",
                        "--secret",
                        mediator_client_secret(SECRET, "A"),
                        "--json",
                        "--wait",
                        "20",
                        "--count",
                        str(attempts),
                        *choice,
                    ),
                ),
                capture_output=True,
                text=True,
                timeout=60 + attempts * 15,
            )
            records = [
                json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")
            ]
            rows.append((label, method, records))
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        subprocess.run(python(natlab, "down", "--prefix", prefix), capture_output=True, timeout=60)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--attempts", type=int, default=20)
    parser.add_argument("--filter", default="drop", choices=["drop", "reject", "off"])
    parser.add_argument("--parallel", type=int, default=2, help="labs at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("nat_matrix: the NAT lab needs root", file=sys.stderr)
        return 2
    natlab = str(shared_dir() / "natlab" / "natlab")
    started = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [
            pool.submit(
                run_pair,
                natlab,
                f"nm{os.getpid() % 10000}x{i}",
                label,
                a,
                b,
                liberal,
                args.attempts,
                args.filter,
            )
            for i, (label, a, b, liberal) in enumerate(PAIRS)
        ]
        results = [row for future in futures for row in future.result()]
    print(
        f"NAT traversal matrix: {args.attempts} attempts per cell, filter {args.filter}, "
        f"{len(PAIRS)} labs, {time.monotonic() - started:.0f}s wall time"
    )
    header = f"{'NAT pair (A/B)':26} {'method':18} {'success':>9} {'median setup':>13} {'median rtt':>11}  first failure reason"
    print(header)
    print("-" * len(header))
    for label, method, records in results:
        ok = [r for r in records if r.get("ok")]
        setup = f"{statistics.median(r['setup_seconds'] for r in ok) * 1000:.0f} ms" if ok else "-"
        rtt = f"{statistics.median(r['rtt_ms'] for r in ok):.2f} ms" if ok else "-"
        failures = [r["reason"] for r in records if not r.get("ok")]
        reason = failures[0][:90] if failures else ""
        if len(records) < args.attempts:
            reason = f"only {len(records)} results; " + reason
        print(
            f"{label:26} {method:18} {len(ok):>4}/{args.attempts:<4} {setup:>13} {rtt:>11}  {reason}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
