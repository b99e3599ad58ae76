"""
``stopper``: a role that gives up stops the reactor, now or once it runs,
and in a role's own process (the launcher plugins say so) ends it with
status 69 instead of twistd's 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import MemoryUDPReactor
from p2psip.util.reactor import CANNOT_WORK_STATUS, exit_with, role_owns_process, stopper


class StopperTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryUDPReactor()
        self.exits: list[Callable[[], None]] = []

    def test_stops_once_running(self) -> None:
        """Before the reactor runs, the stop waits for it to start."""
        stop = stopper(self.reactor, at_exit=self.exits.append)
        stop()
        self.assertFalse(self.reactor.hasStopped)
        for hook, args, kwargs in self.reactor.whenRunningHooks:
            hook(*args, **kwargs)
        self.assertTrue(self.reactor.hasStopped)

    def test_no_exit_status_outside_a_role_process(self) -> None:
        """A role built in a test run (no launcher plugin) does not end the process."""
        stopper(self.reactor, at_exit=self.exits.append)()
        self.assertEqual(self.exits, [])

    def test_role_process_exits_with_failure_status(self) -> None:
        """Under twistd or twist the process ends with 69, however often the role gives up."""
        role_owns_process()
        self.addCleanup(role_owns_process, False)
        stop = stopper(self.reactor, at_exit=self.exits.append)
        stop()
        stop()
        [registered] = self.exits
        assert isinstance(registered, partial)
        self.assertEqual((registered.func, registered.args), (exit_with, (CANNOT_WORK_STATUS,)))
