"""
Churn with real processes: super-nodes SIGKILLed and restarted under SIPp.

``bench/churn.py`` churns a ring of real overlay nodes on one simulated
clock; this is the same experiment with the roles as operators run them:
``twist p2psip-peer`` processes on loopback (TLS links, signed data, each
its own data dir), failing abruptly and started again with the same
data dir, while SIPp registers and calls.  A peer fails by SIGSTOP
(``--failure stop``, the default: it vanishes as a host that lost power,
its connections open and silent, and is SIGKILLed when it restarts) or by
SIGKILL (``--failure kill``: the kernel closes its sockets, so its
neighbours know at once).

Per median session time (``--medians``, minutes), on a fresh ring of
``--peers`` processes:

* A, the bootstrap every other node was started with, is killed for good
  after a minute: every restart has to join through the peers cached in
  its data dir (``known-peers.json``);
* S1 and S2 stay up: phones register at S1 (``bench/sipp/register_refresh.xml``,
  Contact at a SIPp callee, refreshed at half of ``--expires``), calls
  enter at S2 (the shared ``uac.xml``) with its location cache off
  (``--sip-location-cache 0``), so every call is an overlay lookup of the
  callee's registration, stored and replicated on the churning peers;
* every other peer lives an exponential session with the median given,
  fails, and is started again after 5-60 s;
* once a second the bench looks one registered AOR up through S2's admin
  API (``/api/get``, kind sip-registration): "lookups";
* ``--values`` plain values are put through S1 at the start and read back
  through S2 at the end; every AOR is read back at the end: "values lost"
  and "registrations lost";
* after each kill it polls the live members' ``/status`` until each one's
  first predecessor and successor are the true ones again: "repair".

Figures are wall-clock on a shared 2-core host, so the repair times and
call outcomes depend on its load; the process count (``--peers``, up to
24) is what the host has to carry.  Prints one table row per median and
asserts nothing::

    .venv/bin/python bench/churn_processes.py [--peers 12] [--minutes 3] [--medians 10,1.4]

Every process is started here and stopped here by its pid.
"""

from __future__ import annotations

import argparse
import heapq
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak import last_stats, sipp
from super_nodes import DOMAIN, SuperNode, finish_or_stop, start_super_node, stop_process

from p2psip.cli.admin import AdminError
from p2psip.testing import free_port, shared_dir

HERE = Path(__file__).resolve().parent
BOOTSTRAP_LIFETIME_SECONDS = 60.0
RESTART_DELAY_SECONDS = (5.0, 60.0)
CONVERGE_SECONDS = 180.0
TICK_SECONDS = 0.5


@dataclass
class Member:
    """One ring member: its node while it runs, and what it needs to come back."""

    name: str
    node: SuperNode
    churns: bool
    #: Its role options beyond the common ones, given again at a restart.
    extra: list[str] = field(default_factory=list)
    alive: bool = True
    kills: int = 0
    restarts: int = 0


@dataclass
class Outcome:
    """What one median's run saw."""

    median_minutes: float
    kills: int = 0
    restarts: int = 0
    lookups: int = 0
    lookups_failed: int = 0
    values: int = 0
    values_lost: int = 0
    aors: int = 0
    registrations_lost: int = 0
    refreshes: str = "?"
    refreshes_failed: str = "?"
    calls: str = "?"
    calls_failed: str = "?"
    repairs: list[float] = field(default_factory=list)
    unrepaired: int = 0
    failures: list[str] = field(default_factory=list)


def member_status(member: Member) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = member.node.admin().status()
    except (AdminError, OSError, ValueError):
        return None
    return status


def repaired(members: list[Member]) -> bool:
    """Every live, joined member's first predecessor and successor are the true ones."""
    statuses = [s for m in members if m.alive for s in [member_status(m)] if s is not None]
    joined = [s for s in statuses if s.get("state") == "joined"]
    if len(joined) < 2:
        return False
    ring = sorted(s["node_id"] for s in joined)
    for status in joined:
        index = ring.index(status["node_id"])
        predecessors, successors = status.get("predecessors"), status.get("successors")
        if not predecessors or not successors:
            return False
        if predecessors[0]["node_id"] != ring[index - 1]:
            return False
        if successors[0]["node_id"] != ring[(index + 1) % len(ring)]:
            return False
    return True


def registered(member: Member, aor: str) -> bool:
    try:
        answer = member.node.admin().get(aor, kind="sip-registration")
    except (AdminError, OSError, ValueError):
        return False
    return bool(answer.get("found")) and bool(answer.get("bindings"))


def start_ring(work: Path, peers: int) -> list[Member]:
    a = start_super_node(work / "A", free_port(socket.SOCK_DGRAM), "p2psip-bootstrap")
    members = [Member("A", a, churns=False)]
    bootstrap = ["--bootstrap", a.overlay_endpoint]
    for index in range(1, peers):
        name = {1: "S1", 2: "S2"}.get(index, f"P{index}")
        extra = list(bootstrap)
        if name == "S2":
            extra += ["--sip-location-cache", "0"]
        node = start_super_node(
            work / name, free_port(socket.SOCK_DGRAM), "p2psip-peer", extra=extra, wait=False
        )
        members.append(Member(name, node, churns=name not in ("S1", "S2"), extra=extra))
    deadline = time.monotonic() + CONVERGE_SECONDS
    while time.monotonic() < deadline:
        if repaired(members) and all(
            (member_status(m) or {}).get("state") == "joined" or m.name == "A" for m in members
        ):
            return members
        time.sleep(1)
    raise SystemExit(f"the ring of {peers} did not converge within {CONVERGE_SECONDS:g} s")


def fail(member: Member, how: str) -> None:
    """
    ``kill``: SIGKILL, and the kernel closes its sockets, so its neighbours
    see the links go at once.  ``stop``: SIGSTOP, as a host that lost power
    or its network: the connections stay open, nothing answers, and the
    neighbours find out from their own timers (the link's ack timeout, the
    keepalives).  A stopped member is killed when it restarts, or at the end.
    """
    if how == "stop":
        member.node.process.send_signal(signal.SIGSTOP)
    else:
        member.node.process.kill()
        member.node.process.wait()
    member.alive = False


def restart(member: Member) -> None:
    """
    Start a killed member again where it was: same data dir and ports, and
    the same ``--bootstrap``, which is dead by then, so it must join through
    the peers cached in its data dir.
    """
    old = member.node
    member.node = start_super_node(
        old.directory,
        old.sip_port,
        old.role,
        extra=member.extra,
        ports=(old.overlay_port, old.http_port),
        wait=False,
    )
    member.alive = True
    member.restarts += 1


def run_median(args: argparse.Namespace, median: float, seed: int) -> Outcome:
    work = Path(tempfile.mkdtemp(prefix=f"p2psip-churn-{median:g}-"))
    outcome = Outcome(median)
    rng = random.Random(seed)
    processes: list[subprocess.Popen[bytes]] = []
    members: list[Member] = []
    callees = shared_dir() / "anchors" / "callees.csv"
    lines = callees.read_text().splitlines()
    aors = [f"sip:{line.split(';')[0]}@{DOMAIN}" for line in lines[1 : args.aors + 1]]
    csv = work / "callees.csv"
    csv.write_text("\n".join([lines[0], *lines[1 : args.aors + 1]]) + "\n")
    outcome.aors = len(aors)
    try:
        print(f"  {median:g} min: starting {args.peers} processes in {work}", flush=True)
        members = start_ring(work, args.peers)
        s1 = next(m for m in members if m.name == "S1")
        s2 = next(m for m in members if m.name == "S2")
        uas_port = free_port(socket.SOCK_DGRAM)
        (work / "uas").mkdir()
        uas = subprocess.Popen(
            [
                *(shutil.which("sipp") or "sipp", "-sf", str(shared_dir() / "anchors" / "uas.xml")),
                *("-i", DOMAIN, "-p", str(uas_port), "-nostdin", "-buff_size", "4194304"),
            ],
            cwd=work / "uas",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        processes.append(uas)
        common = ("-inf", str(csv), "-key", "contact_port", str(uas_port))
        common += ("-key", "expires", str(args.expires))
        first = sipp(
            HERE / "sipp" / "register_refresh.xml", s1.node, 50, len(aors), work, "first", *common
        )
        processes.append(first)
        first.wait(120)
        values = [f"churn-value-{i}" for i in range(args.values)]
        for name in values:
            s1.node.admin().put(name, f"{name} stored before the churn", 3600)
        outcome.values = len(values)
        duration = args.minutes * 60
        refresh_rate = len(aors) / (args.expires / 2)
        refresh = sipp(
            HERE / "sipp" / "register_refresh.xml",
            s1.node,
            refresh_rate,
            int(refresh_rate * duration),
            work,
            "refresh",
            *common,
        )
        calls = sipp(
            shared_dir() / "anchors" / "uac.xml",
            s2.node,
            args.call_rate,
            int(args.call_rate * duration),
            work,
            "calls",
            "-inf",
            str(csv),
        )
        processes += [refresh, calls]
        mean_session = median * 60 / 0.6931471805599453
        began = time.monotonic()
        events: list[tuple[float, int, str]] = []  # (when, member index, "kill" | "restart")
        for index, member in enumerate(members):
            if member.churns:
                heapq.heappush(events, (rng.expovariate(1 / mean_session), index, "kill"))
        heapq.heappush(events, (BOOTSTRAP_LIFETIME_SECONDS, 0, "kill"))
        open_repairs: list[float] = []
        next_lookup = 0.0
        while (now := time.monotonic() - began) < duration:
            while events and events[0][0] <= now:
                _, index, what = heapq.heappop(events)
                member = members[index]
                if what == "kill" and member.alive:
                    fail(member, args.failure)
                    member.kills += 1
                    outcome.kills += 1
                    open_repairs.append(now)
                    if member.churns:
                        delay = rng.uniform(*RESTART_DELAY_SECONDS)
                        heapq.heappush(events, (now + delay, index, "restart"))
                elif what == "restart" and not member.alive:
                    member.node.process.kill()  # a frozen one is gone for good now
                    member.node.process.wait()
                    restart(member)
                    outcome.restarts += 1
                    session = rng.expovariate(1 / mean_session)
                    heapq.heappush(events, (now + session, index, "kill"))
            if open_repairs and repaired(members):
                done = time.monotonic() - began
                outcome.repairs += [done - killed for killed in open_repairs]
                open_repairs.clear()
            if now >= next_lookup:
                next_lookup = now + 1.0
                aor = rng.choice(aors)
                outcome.lookups += 1
                if not registered(s2, aor):
                    outcome.lookups_failed += 1
                    outcome.failures.append(f"{now:.0f} s lookup {aor}")
            time.sleep(TICK_SECONDS)
        outcome.unrepaired = len(open_repairs)
        for process in (refresh, calls):
            finish_or_stop(process, 60)
        call_stats = last_stats(work / "calls" / "stat.csv")
        refresh_stats = last_stats(work / "refresh" / "stat.csv")
        outcome.calls = call_stats.get("TotalCallCreated", "?")
        outcome.calls_failed = call_stats.get("FailedCall(C)", "?")
        outcome.refreshes = refresh_stats.get("TotalCallCreated", "?")
        outcome.refreshes_failed = refresh_stats.get("FailedCall(C)", "?")
        for aor in aors:
            if not registered(s2, aor):
                outcome.registrations_lost += 1
                outcome.failures.append(f"end: registration {aor} not found")
        for name in values:
            try:
                answer = s2.node.admin().get(name)
            except (AdminError, OSError, ValueError):
                answer = {}
            if not answer.get("found"):
                outcome.values_lost += 1
                outcome.failures.append(f"end: value {name} not found")
        return outcome
    finally:
        for process in processes:
            stop_process(process, grace_seconds=10)
        for member in members:
            if member.node.process.poll() is not None:
                continue
            if member.alive:
                stop_process(member.node.process)
            else:
                member.node.process.kill()  # frozen: it would never handle SIGTERM
                member.node.process.wait()


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def show(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peers", type=int, default=12, help="processes in the ring (3 to 24)")
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of churn per median")
    parser.add_argument("--medians", default="10,1.4", help="median session times, minutes")
    parser.add_argument("--aors", type=int, default=200, help="phones registered at S1")
    parser.add_argument("--expires", type=int, default=60, help="registration expiry, seconds")
    parser.add_argument("--call-rate", type=float, default=5.0, help="calls/s entering at S2")
    parser.add_argument("--values", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--failure",
        choices=("stop", "kill"),
        default="stop",
        help="how a peer fails: stop (SIGSTOP: gone without a word, as a power cut) or "
        "kill (SIGKILL: its sockets closed at once)",
    )
    parser.add_argument("--details", action="store_true", help="list every failure seen")
    args = parser.parse_args()
    if not 4 <= args.peers <= 24:
        raise SystemExit("--peers takes 4 to 24 (A, S1, S2 and at least one churning peer)")
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (make deps)")
    print(
        f"{args.peers} twist processes on loopback (A the bootstrap, gone after "
        f"{BOOTSTRAP_LIFETIME_SECONDS:g} s; S1 and S2 stay; {args.peers - 3} churning), "
        f"{args.minutes:g} min per median, {args.aors} phones at S1 (expiry {args.expires} s, "
        f"refresh at half), {args.call_rate:g} calls/s at S2 (location cache off), "
        f"{args.values} values, peers fail by {args.failure}, seed {args.seed}\n",
        flush=True,
    )
    outcomes = [
        run_median(args, float(median), args.seed + i)
        for i, median in enumerate(args.medians.split(","))
    ]
    print(
        "\n| median session | kills / restarts | lookup success | registrations lost | "
        "values lost | refreshes failed | calls failed | repair p50 / p95 s (unrepaired) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for o in outcomes:
        success = 100 * (o.lookups - o.lookups_failed) / o.lookups if o.lookups else 0.0
        print(
            f"| {o.median_minutes:g} min | {o.kills} / {o.restarts} | {success:.2f} % "
            f"({o.lookups_failed}/{o.lookups}) | {o.registrations_lost}/{o.aors} | "
            f"{o.values_lost}/{o.values} | {o.refreshes_failed}/{o.refreshes} | "
            f"{o.calls_failed}/{o.calls} | {show(percentile(o.repairs, 0.5))} / "
            f"{show(percentile(o.repairs, 0.95))} ({o.unrepaired}) |"
        )
    if args.details:
        for o in outcomes:
            print(f"\n{o.median_minutes:g} min:")
            for line in o.failures:
                print(f"  {line}")


if __name__ == "__main__":
    main()
