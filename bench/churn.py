"""
Churn at the Bamboo paper's rates: a ring of real overlay nodes on one fake
clock whose peers fail abruptly and restart, while users look up, store,
fetch, register and call (``tests/overlay/churnsim.py`` says exactly what
each figure means).

Peers' sessions are exponential with the median given (Rhea et al. 2004
ran 1.4 minutes to hours; the defaults are 30, 10 and 1.4 minutes); a
failed peer restarts after 5-60 s with its key, its known peers and its
saved DHT values (``--no-persistence``: empty), the
founding peer (everyone's ``--bootstrap``) fails for good a minute in, and
phones refresh their registrations at half the expiry, moving to another
super-node when theirs is gone.  The links are in memory but carry the
real signed RELOAD messages, and the timers are the roles' defaults
(``OverlayConfig()``: keepalive 15 s, Update 60 s, request timeout 15 s,
link ack timeout 5 s).  Prints one table row per median; asserts nothing.
Simulated time, so the figures do not depend on the host's load (only the
wall-clock column does).

    .venv/bin/python bench/churn.py [--peers 30] [--minutes 20] [--medians 30,10,1.4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.overlay.churnsim import ChurnReport, ChurnRun, ChurnSettings


def row(report: ChurnReport, wall: float) -> str:
    s = report.settings
    calls_failed = sum(report.calls_failed.values())
    return (
        f"| {s.median_session_seconds / 60:g} min | {report.failures} | "
        f"{100 * report.lookup_success:.2f} % ({report.lookups_failed}/{report.lookups}) | "
        f"{report.lookups_origin_failed} | "
        f"{report.wrong_node} | "
        f"{report.fetches_failed + report.fetch_misses}/{report.fetches} | "
        f"{report.values_lost}/{report.values_audited} ({report.values_restored}) | "
        f"{report.registrations_lost}/{report.registrations_audited} | "
        f"{100 * report.call_success:.1f} % ({calls_failed}/{report.calls}) | "
        f"{report.repair_percentile(0.5):.0f} / {report.repair_percentile(0.95):.0f} s | "
        f"{report.bytes_per_peer_second(True):.0f} + {report.bytes_per_peer_second(False):.0f} | "
        f"{report.joins}/{report.joins_without_bootstrap} | {wall:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=20.0, help="simulated minutes of churn")
    parser.add_argument("--medians", default="30,10,1.4", help="median session times, minutes")
    parser.add_argument("--lookups", type=float, default=2.0, help="lookups per second")
    parser.add_argument("--phones", type=int, default=100)
    parser.add_argument("--values", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--no-persistence",
        action="store_true",
        help="restarted peers come back empty (their data dir's DHT values lost)",
    )
    parser.add_argument(
        "--details",
        action="store_true",
        help="print why operations failed, and one line per failed lookup (its owner, the just-failed peer whose range it was, the error)",
    )
    args = parser.parse_args()
    print(
        f"{args.peers} peers, {args.minutes:g} simulated minutes of churn per median, "
        f"{args.lookups:g} lookups/s, {args.values} values, {args.phones} phones "
        "(expiry 600 s, refresh at 300 s), 1 call/s, seed "
        f"{args.seed}; restarted peers "
        + ("come back empty" if args.no_persistence else "take back their data dir's values")
        + "\n"
    )
    print(
        "| median session | failures | lookup success | origin failed | wrong node | "
        "fetches failed | values lost (resources taken back at restarts) | "
        "registrations lost | call success | repair p50 / p95 | "
        "bytes/peer/s maintenance + storage | restarts / without bootstrap | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    details = []
    for median in (float(m) for m in args.medians.split(",")):
        settings = ChurnSettings(
            peers=args.peers,
            median_session_seconds=median * 60,
            churn_seconds=args.minutes * 60,
            lookups_per_second=args.lookups,
            values=args.values,
            phones=args.phones,
            seed=args.seed,
            keep_values=not args.no_persistence,
        )
        started = time.perf_counter()
        report = ChurnRun(settings).run()
        print(row(report, time.perf_counter() - started), flush=True)
        details.append((median, report))
    if args.details:
        for median, report in details:
            print(f"\n{median:g} min: calls failed {dict(report.calls_failed)}")
            print(
                "  not counted, their asking peer failed in flight: "
                f"{report.lookups_origin_failed} lookups, "
                f"{report.fetches_origin_failed} fetches and calls"
            )
            print(f"  failures by operation: {dict(report.failure_reasons)}")
            for line in report.lookup_failures:
                print(f"  failed lookup {line}")
            print(
                f"  joins failed (retried): {report.joins_failed}, unrepaired at end {report.unrepaired}"
            )


if __name__ == "__main__":
    main()
