"""
A debug-only memory report, written to the log on SIGUSR2.

A soak that shows a process's RSS growing does not say what grows.  This
report does, from inside the running process, without stopping it:

* live objects tracked by the garbage collector, counted by type, with
  the change since the previous report (a structure that only grows shows
  up as its element type climbing report after report);
* what the collector found in reference cycles since the previous report,
  per generation (work that leaves cycles behind costs a collection each
  time, even when nothing leaks);
* when :mod:`tracemalloc` is tracing (start the process with
  ``PYTHONTRACEMALLOC=1``, or ``=5`` for five frames), the allocation
  sites whose memory grew the most since the previous report.

It is off unless the role is started with ``--debug-memory-signal``:
counting every object walks the whole heap, a pause of tens of
milliseconds per hundred thousand objects, which a public server must not
let a stray signal cause.  Then ``kill -USR2 PID`` logs one report (one
log event, at info level).

:class:`MemoryReport` is the plain part (counts in, lines out) and
:class:`MemoryReportService` the signal and the log around it.  The
signal handler only schedules the report on the event loop, so the heap
is never walked in the middle of another function.
"""

from __future__ import annotations

import gc
import signal
import tracemalloc
import types
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

#: Lines per section of a report.
DEFAULT_TOP = 25


def count_types(objects: Iterable[object]) -> Counter[str]:
    """Objects by their type's qualified name (module included for classes of ours)."""
    counts: Counter[str] = Counter()
    for thing in objects:
        kind = type(thing)
        module = kind.__module__
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        counts[name] += 1
    return counts


class MemoryReport:
    """
    Successive reports of what the process holds, each against the one before.

    :param objects: the live objects to count (the garbage collector's by default).
    :param top: lines per section.
    """

    def __init__(
        self,
        objects: Callable[[], Iterable[object]] = gc.get_objects,
        top: int = DEFAULT_TOP,
    ) -> None:
        self._objects = objects
        self._top = top
        self._previous_counts: Counter[str] = Counter()
        self._previous_collected = [0, 0, 0]
        self._previous_sites: dict[str, tuple[int, int]] | None = None
        #: Reports made so far.
        self.reports = 0

    def lines(self) -> list[str]:
        """The next report, one line per entry."""
        counts = count_types(self._objects())
        growth = counts.copy()
        growth.subtract(self._previous_counts)
        self._previous_counts = counts
        self.reports += 1
        out = [
            f"memory report {self.reports}: {sum(counts.values())} objects tracked by the "
            f"collector ({gc.get_freeze_count()} more frozen at start-up)"
        ]
        out.append(f"largest growth in live objects since the previous report (of {self._top}):")
        for name, delta in sorted(growth.items(), key=lambda item: -item[1])[: self._top]:
            if delta <= 0:
                break
            out.append(f"  {delta:+d} {name} (now {counts[name]})")
        collected = [generation["collected"] for generation in gc.get_stats()]
        found = [now - before for now, before in zip(collected, self._previous_collected)]
        self._previous_collected = collected
        out.append(
            "found in reference cycles since the previous report, by generation: "
            + ", ".join(str(n) for n in found)
        )
        out.extend(self._cycle_lines())
        self._previous_collected = [generation["collected"] for generation in gc.get_stats()]
        out.extend(self._allocation_lines())
        return out

    def _cycle_lines(self) -> list[str]:
        """What waits for the collector now: one collection, its garbage kept and counted."""
        flags = gc.get_debug()
        gc.set_debug(flags | gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            garbage = count_types(gc.garbage)
            functions = Counter(
                _code_name(thing) for thing in gc.garbage if isinstance(thing, _CODE_TYPES)
            )
            sites = Counter(
                _allocated_at(thing) for thing in gc.garbage if tracemalloc.is_tracing()
            )
        finally:
            gc.set_debug(flags)
            gc.garbage.clear()
        out = [f"in reference cycles now, by type ({sum(garbage.values())} objects):"]
        out.extend(f"  {count} {name}" for name, count in garbage.most_common(self._top))
        if functions:
            out.append("  of which functions, methods, frames and generators:")
            out.extend(f"    {count} {name}" for name, count in functions.most_common(self._top))
        if sites:
            out.append("  allocated at (the innermost frame of ours, when traced):")
            out.extend(f"    {count} {where}" for where, count in sites.most_common(self._top))
        return out

    def _allocation_lines(self) -> list[str]:
        if not tracemalloc.is_tracing():
            return ["allocation sites: not tracing (start with PYTHONTRACEMALLOC=1)"]
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        # Keep only the per-site totals: a kept snapshot holds a tuple per
        # traced block, which the next report would count as growth.
        sites = {_where(stat): (stat.size, stat.count) for stat in snapshot.statistics("lineno")}
        del snapshot
        previous, self._previous_sites = self._previous_sites, sites
        traced, peak = tracemalloc.get_traced_memory()
        out = [f"traced memory {traced // 1024} KiB (peak {peak // 1024} KiB)"]
        if previous is None:
            out.append("largest allocation sites (growth from the next report on):")
            largest = sorted(sites.items(), key=lambda item: -item[1][0])[: self._top]
            for where, (size, count) in largest:
                out.append(f"  {size // 1024} KiB in {count} blocks at {where}")
            return out
        out.append("largest growth by allocation site since the previous report:")
        growth = [
            (
                size - previous.get(where, (0, 0))[0],
                count - previous.get(where, (0, 0))[1],
                size,
                where,
            )
            for where, (size, count) in sites.items()
        ]
        growth.sort(key=lambda item: -item[0])
        for size_diff, count_diff, size, where in growth[: self._top]:
            if size_diff <= 0:
                break
            out.append(
                f"  {size_diff / 1024:+.1f} KiB ({count_diff:+d} blocks, now {size // 1024} KiB) "
                f"at {where}"
            )
        return out


_CODE_TYPES = (types.FunctionType, types.MethodType, types.FrameType, types.GeneratorType)


def _code_name(thing: object) -> str:
    """The qualified name of a function's, method's, frame's or generator's code."""
    code = getattr(thing, "f_code", None) or getattr(thing, "gi_code", None)
    if code is None:
        code = getattr(getattr(thing, "__func__", thing), "__code__", None)
    name = getattr(code, "co_qualname", "?")
    filename = getattr(code, "co_filename", "?").rsplit("/", 2)[-2:]
    return f"{name} ({'/'.join(filename)})"


def _allocated_at(thing: object) -> str:
    """Where tracemalloc saw ``thing`` allocated: the innermost frame in p2psip, else the innermost."""
    traceback = tracemalloc.get_object_traceback(thing)
    if traceback is None:
        return "?"
    frames = list(traceback)  # innermost first
    ours = [frame for frame in frames if "/p2psip/" in frame.filename]
    frame = (ours or frames)[0]
    return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"


def _where(stat: tracemalloc.Statistic) -> str:
    """The innermost frame and, with more frames traced, its callers."""
    frames = list(stat.traceback)
    where = " <- ".join(f"{frame.filename}:{frame.lineno}" for frame in frames[:3])
    return where or "?"


class MemoryReportService(Service):
    """
    Logs a :class:`MemoryReport` each time the process gets SIGUSR2.

    :param schedule: runs a callable soon on the event loop from a signal
        handler (the reactor's ``callFromThread``).
    """

    log = Logger()

    def __init__(
        self,
        schedule: Callable[[Callable[[], None]], object],
        report: MemoryReport | None = None,
        signal_number: int = signal.SIGUSR2,
    ) -> None:
        self._schedule = schedule
        self.report = report or MemoryReport()
        self._signal_number = signal_number
        self._previous_handler: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous_handler = signal.signal(self._signal_number, self._signalled)
        self.log.info(
            "memory report on signal {signal} (--debug-memory-signal); tracemalloc {tracing}",
            signal=signal.Signals(self._signal_number).name,
            tracing="on" if tracemalloc.is_tracing() else "off",
        )

    def stopService(self) -> None:
        signal.signal(self._signal_number, self._previous_handler or signal.SIG_DFL)
        return super().stopService()  # type: ignore[no-any-return]

    def _signalled(self, number: int, frame: types.FrameType | None) -> None:
        self._schedule(self.write_report)

    def write_report(self) -> None:
        """Log one report (one event)."""
        self.log.info("{report}", report="\n".join(self.report.lines()))


__all__ = ["DEFAULT_TOP", "MemoryReport", "MemoryReportService", "count_types"]
