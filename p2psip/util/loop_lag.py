"""
How late the event loop runs what it was asked to run: the loop-lag probe.

A process that has more to do than it can do shows it first in its event
loop: a timer asked for in 100 ms fires after 300, because the reactor was
busy reading and answering packets.  That lateness is the one measure of
overload that covers every cause (CPU, a slow disk write, a garbage
collection) and needs nothing from the parts that cause it.

:class:`LoopLagProbe` asks the clock for a call every ``interval_seconds``
and records how much later than asked it ran.  It keeps the latest sample,
an exponentially smoothed value (what the SIP overload guard compares with
its threshold, so one slow iteration does not refuse calls; see
:mod:`p2psip.sip.overload`), the largest sample since start and a bounded
window of recent samples for percentiles (the soak reports the p99).
Time comes from the injected clock only, so tests drive it with a fake one.
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: How often the probe asks for a call (ten a second costs nothing).
DEFAULT_INTERVAL_SECONDS = 0.1
#: Weight of a new sample in the smoothed lag: about the last ten samples
#: (one second) count, so a single long iteration moves it by a quarter.
DEFAULT_SMOOTHING = 0.25
#: Samples kept for percentiles: ten minutes at ten a second.
DEFAULT_WINDOW = 6000


class LoopLagProbe:
    """
    Measures how late the event loop runs a call asked for at a fixed interval.

    :param clock: the reactor (or a fake clock in tests).
    :param interval_seconds: the delay asked for each time.
    :param smoothing: weight of each new sample in :attr:`smoothed_seconds`.
    :param window: recent samples kept for :meth:`percentile`.
    """

    def __init__(
        self,
        clock: IReactorTime,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        smoothing: float = DEFAULT_SMOOTHING,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if interval_seconds <= 0 or not 0 < smoothing <= 1:
            raise ValueError("the interval must be positive and the smoothing in (0, 1]")
        self.clock = clock
        self.interval_seconds = interval_seconds
        self.smoothing = smoothing
        #: The last sample, the smoothed lag and the largest sample, in seconds.
        self.last_seconds = 0.0
        self.smoothed_seconds = 0.0
        self.max_seconds = 0.0
        #: Samples taken since start.
        self.samples = 0
        self._recent: deque[float] = deque(maxlen=window)
        self._call: IDelayedCall | None = None
        self._asked_at = 0.0

    @property
    def running(self) -> bool:
        return self._call is not None

    def start(self) -> None:
        """Begin measuring (again); the figures so far are kept."""
        if self._call is None:
            self._schedule()

    def stop(self) -> None:
        """Cancel the pending call, so a stopped role leaves no timer behind."""
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        self._asked_at = self.clock.seconds()
        self._call = self.clock.callLater(self.interval_seconds, self._fired)

    def _fired(self) -> None:
        lag = max(0.0, self.clock.seconds() - self._asked_at - self.interval_seconds)
        self.record(lag)
        self._schedule()

    def record(self, lag_seconds: float) -> None:
        """Take one sample (the probe's own calls, or a test's)."""
        self.samples += 1
        self.last_seconds = lag_seconds
        self.smoothed_seconds += self.smoothing * (lag_seconds - self.smoothed_seconds)
        self.max_seconds = max(self.max_seconds, lag_seconds)
        self._recent.append(lag_seconds)

    def percentile(self, fraction: float) -> float:
        """The ``fraction`` quantile (0.99: p99) of the recent samples; 0 before any."""
        if not self._recent:
            return 0.0
        ordered = sorted(self._recent)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    def status(self) -> dict[str, float]:
        """The figures for ``/status``, in seconds."""
        return {
            "last_seconds": round(self.last_seconds, 4),
            "smoothed_seconds": round(self.smoothed_seconds, 4),
            "p99_seconds": round(self.percentile(0.99), 4),
            "max_seconds": round(self.max_seconds, 4),
        }


__all__ = ["LoopLagProbe", "DEFAULT_INTERVAL_SECONDS", "DEFAULT_SMOOTHING"]
