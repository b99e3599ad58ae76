"""Tests for the debug memory report: counts, growth between reports, the signal, and its option."""

from __future__ import annotations

import gc
import signal

from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.util.memory_report import MemoryReport, MemoryReportService, count_types

BOOTSTRAP = ["--bootstrap", "tcp:198.51.100.10:6084", "--insecure"]


class Grower:
    """A type of ours whose instances a test adds between reports."""


class MemoryReportTests(SynchronousTestCase):
    def test_types_are_counted_by_qualified_name(self) -> None:
        """Builtins by their bare name, other classes with their module."""
        counts = count_types([1, "a", Grower(), Grower()])
        self.assertEqual(counts[f"{__name__}.Grower"], 2)
        self.assertEqual((counts["int"], counts["str"]), (1, 1))

    def test_growth_is_against_the_previous_report(self) -> None:
        """The second report names the type that grew, by how much, and its total."""
        live: list[object] = [Grower()]
        report = MemoryReport(objects=lambda: live)
        report.lines()
        live.extend(Grower() for _ in range(3))
        lines = report.lines()
        self.assertIn(f"  +3 {__name__}.Grower (now 4)", lines)
        self.assertTrue(lines[0].startswith("memory report 2: "))

    def test_nothing_grown_lists_nothing(self) -> None:
        """A report with no growth has no growth lines, only its section headers."""
        live: list[object] = [Grower()]
        report = MemoryReport(objects=lambda: live)
        report.lines()
        lines = report.lines()
        self.assertFalse([line for line in lines if line.startswith("  +")])

    def test_cycles_waiting_for_the_collector_are_named(self) -> None:
        """An object in a reference cycle shows up in the report's cycle section."""
        report = MemoryReport(objects=lambda: [])
        gc.collect()  # earlier tests' cycles out of the way
        cycle = Grower()
        cycle.itself = cycle  # type: ignore[attr-defined]
        del cycle
        lines = report.lines()
        start = next(i for i, line in enumerate(lines) if line.startswith("in reference cycles"))
        self.assertIn(f"  1 {__name__}.Grower", lines[start:])


class MemoryReportServiceTests(SynchronousTestCase):
    def test_signal_schedules_one_logged_report(self) -> None:
        """SIGUSR2 only schedules the report; running it logs one event; stopping restores the handler."""
        before = signal.getsignal(signal.SIGUSR2)
        scheduled: list[object] = []
        service = MemoryReportService(scheduled.append, MemoryReport(objects=lambda: []))
        service.startService()
        self.addCleanup(lambda: signal.signal(signal.SIGUSR2, before))
        handler = signal.getsignal(signal.SIGUSR2)
        assert callable(handler)
        handler(signal.SIGUSR2, None)
        self.assertEqual(scheduled, [service.write_report])
        with capturedLogs() as events:
            service.write_report()
        self.assertEqual(len(events), 1)
        self.assertIn("memory report 1:", events[0]["report"])
        service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGUSR2), before)

    def test_off_by_default_and_on_with_the_option(self) -> None:
        """A ring role has the report service only with --debug-memory-signal."""
        from p2psip.overlay.identity import NodeIdentity
        from p2psip.roles import peer
        from p2psip.roles.super_node import RingState, make_ring_role
        from p2psip.testing import MemoryUDPReactor

        found = []
        for extra in ([], ["--debug-memory-signal"]):
            options = peer.Options()
            options.parseOptions([*BOOTSTRAP, "--data-dir", self.mktemp(), *extra])
            role = make_ring_role(
                options.config,
                MemoryUDPReactor(),
                RingState(NodeIdentity.from_secret(7)),
                freeze_gc=False,
            )
            found.append([s for s in role if isinstance(s, MemoryReportService)])
        self.assertEqual([len(services) for services in found], [0, 1])
