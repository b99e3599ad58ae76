"""
Run every harness (or those named) for a bounded time, one after the other.

    python -m fuzz.run [--seconds 60] [--runs N] [--corpus fuzz/corpus] [harness ...]

With ``--runs`` alone a harness runs that many inputs however long it takes.

Each harness runs in its own process on its own corpus folder (seeded by
the harness, kept between runs, never committed), and stops at its first
crash, whose input libFuzzer writes to the artifacts folder.  The table
printed at the end gives, per harness, the inputs run, inputs per second
and crashes; the exit status is 1 when any harness crashed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HARNESSES = ("sip", "reload", "stun", "sdp", "mediator", "broker", "sip_usage", "enrolment")
HERE = Path(__file__).resolve().parent


def run_one(name: str, args: argparse.Namespace) -> tuple[int, int, int, float, list[Path]]:
    corpus = args.corpus / name
    artifacts = args.artifacts
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.glob(f"{name}-*"))
    command = [
        sys.executable,
        "-m",
        f"fuzz.{name}",
        str(corpus),
        f"-max_total_time={args.seconds or 0}",
        f"-artifact_prefix={artifacts}/{name}-",
        f"-timeout={args.timeout}",
        "-print_final_stats=1",
    ]
    if args.runs:
        command.append(f"-runs={args.runs}")
    dictionary = HERE / f"{name}.dict"
    if dictionary.exists():
        command.append(f"-dict={dictionary}")
    log = artifacts / f"{name}.log"
    started = time.monotonic()
    with log.open("w") as sink:  # written as it runs, so a long run can be watched
        result = subprocess.run(command, cwd=HERE.parent, stdout=sink, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")
    units = re.search(r"stat::number_of_executed_units:\s*(\d+)", output)
    rate = re.search(r"stat::average_exec_per_sec:\s*(\d+)", output)
    crashes = sorted(set(artifacts.glob(f"{name}-*")) - before - {log})
    if result.returncode != 0 and not crashes:
        crashes = [log]  # died without an artifact (e.g. a harness import error): see the log
    return (
        int(units.group(1)) if units else 0,
        int(rate.group(1)) if rate else 0,
        result.returncode,
        elapsed,
        crashes,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", help=f"some of {', '.join(HARNESSES)} (all)")
    parser.add_argument(
        "--seconds", type=int, help="time per harness (60; no limit when --runs is given)"
    )
    parser.add_argument("--runs", type=int, default=0, help="stop a harness after this many inputs")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    parser.add_argument("--artifacts", type=Path, default=HERE / "artifacts")
    args = parser.parse_args(argv)
    args.corpus, args.artifacts = args.corpus.resolve(), args.artifacts.resolve()
    if args.seconds is None and not args.runs:
        args.seconds = 60
    unknown = set(args.harnesses) - set(HARNESSES)
    if unknown:
        parser.error(f"unknown harnesses {', '.join(sorted(unknown))}")
    rows = []
    for name in args.harnesses or HARNESSES:
        limits = [
            f"{args.runs} inputs" if args.runs else "",
            f"{args.seconds} s" if args.seconds else "",
        ]
        print(f"fuzzing {name} for up to {' or '.join(filter(None, limits))} ...", flush=True)
        units, rate, status, elapsed, crashes = run_one(name, args)
        rows.append((name, units, rate, elapsed, crashes))
        for crash in crashes:
            print(f"  CRASH in {name}: {crash} (exit status {status})", flush=True)
    print(f"\n{'harness':<10} {'inputs':>10} {'inputs/s':>9} {'seconds':>8} {'crashes':>8}")
    for name, units, rate, elapsed, crashes in rows:
        print(f"{name:<10} {units:>10} {rate:>9} {elapsed:>8.1f} {len(crashes):>8}")
    return 1 if any(row[4] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
