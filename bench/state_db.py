"""
What keeping the bindings in the state database costs a super-node.

Three figures, each the best of five runs (other load on the machine only
makes a run slower):

* the anchor: one REGISTER through the registrar (parse, rules, the
  overlay store on an in-memory overlay), with nothing persisted;
* the store's share of a REGISTER on the reactor's thread: staging the
  changed AOR's row as the registrar reports the change
  (``BindingStore.stage``, JSON of its bindings);
* one batched round of a second's worth of REGISTERs at each ``--rates``:
  what holds the reactor (taking the staged rows, as
  ``StateFlusher.tick`` does before it hands them to its thread), and the
  commit that thread then runs (one sqlite transaction; a role without
  threads, and the last round at shutdown, commit on the reactor), with the
  raw sqlite INSERT of as many rows as the floor.

Prints figures; asserts nothing.  Run with the project's virtualenv:

    .venv/bin/python bench/state_db.py [--rates 100,1000,5000] [--users 20000]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from p2psip.sip.binding_store import BindingStore
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, parse_message
from p2psip.sip.registrar import Registrar
from p2psip.sip.transaction import Hop
from p2psip.util.state_db import StateDatabase, StateFlusher
from tests.sip.memory_storage import MemoryOverlayStorage

NOW = 1_764_000_000.0
REGISTER = (
    "REGISTER sip:example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.{host}:5062;branch=z9hG4bK{cseq}x{user};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:user{user}@example.org>;tag=8a7d6f\r\n"
    "To: <sip:user{user}@example.org>\r\n"
    "Call-ID: reg{user}@192.0.2.{host}\r\n"
    "CSeq: {cseq} REGISTER\r\n"
    "Contact: <sip:user{user}@192.0.2.{host}:5062>;expires=3600\r\n"
    "Content-Length: 0\r\n\r\n"
)


def register_request(user: int, cseq: int) -> Request:
    message = parse_message(
        REGISTER.format(user=user, cseq=cseq, host=user % 250 + 1).encode("ascii")
    )
    assert isinstance(message, Request)
    return message


def best_of_five(run: Callable[[], float]) -> float:
    return min(run() for _ in range(5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,1000,5000", help="REGISTERs per second")
    parser.add_argument("--users", type=int, default=20000, help="AORs registered first")
    arguments = parser.parse_args()
    rates = [int(rate) for rate in arguments.rates.split(",")]

    directory = Path(tempfile.mkdtemp(prefix="p2psip-bench-state-"))
    clock = Clock()
    clock.advance(NOW)
    registrar = Registrar(
        "example.org",
        OverlayLocationService(MemoryOverlayStorage(1, clock), clock),
        clock,
        trusted_network=True,
    )
    database = StateDatabase.open(directory / "state.sqlite3")
    store = BindingStore(database, registrar)
    flusher = StateFlusher(database, clock)
    flow = Hop("UDP", "198.51.100.7", 40000)
    cseq = 1

    def register_all(users: range) -> None:
        nonlocal cseq
        cseq += 1
        for user in users:
            registrar.register_received(register_request(user, cseq), flow)

    register_all(range(arguments.users))
    flusher.flush()
    print(f"{arguments.users} AORs registered and committed to {database.path.name}")

    batch = 1000

    def anchor() -> float:
        nonlocal cseq
        cseq += 1
        requests = [register_request(user, cseq) for user in range(batch)]
        registrar.change_observers.remove(store.stage)
        start = time.perf_counter()
        for request in requests:
            registrar.register_received(request, flow)
        seconds = (time.perf_counter() - start) / batch
        registrar.change_observers.append(store.stage)
        return seconds

    def staging() -> float:
        aors = [f"sip:user{user}@example.org" for user in range(batch)]
        start = time.perf_counter()
        for aor in aors:
            store.stage(aor)
        seconds = (time.perf_counter() - start) / batch
        database.flush()
        return seconds

    print(f"{'REGISTER through the registrar (anchor)':<52} {best_of_five(anchor) * 1e6:8.1f} us")
    print(f"{'staging its row for the state database':<52} {best_of_five(staging) * 1e6:8.1f} us")

    for rate in rates:
        commits: list[float] = []

        def collect(rate: int = rate, commits: list[float] = commits) -> float:
            nonlocal cseq
            cseq += 1
            register_all(range(rate))
            start = time.perf_counter()
            staged = database.take_staged()
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            database.commit(staged)
            commits.append(time.perf_counter() - start)
            return seconds

        def raw_floor(rate: int = rate) -> float:
            rows = [("bench", str(user), b"x" * 300) for user in range(rate)]
            connection = sqlite3.connect(str(directory / "floor.sqlite3"), isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                "CREATE TABLE IF NOT EXISTS t (s TEXT, k TEXT, v BLOB, PRIMARY KEY (s, k))"
            )
            start = time.perf_counter()
            connection.execute("BEGIN")
            connection.executemany("INSERT OR REPLACE INTO t VALUES (?, ?, ?)", rows)
            connection.execute("COMMIT")
            seconds = time.perf_counter() - start
            connection.close()
            return seconds

        held = best_of_five(collect)
        floor = best_of_five(raw_floor)
        print(
            f"{rate:>5} REGISTERs/s, 1 s batch: reactor held {held * 1e3:7.2f} ms "
            f"({held / rate * 1e6:5.1f} us per REGISTER); commit in its thread "
            f"{min(commits) * 1e3:7.2f} ms; raw sqlite floor {floor * 1e3:6.2f} ms"
        )
    print(
        f"first commit of all {arguments.users} AORs (start-up, inline): "
        f"{flusher.longest_flush_seconds * 1e3:.2f} ms"
    )
    registrar.stop()
    database.close()
    shutil.rmtree(directory)


if __name__ == "__main__":
    main()
