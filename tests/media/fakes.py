"""A socket opener for the relay's sans-IO tests: it records legs and opens nothing."""

from __future__ import annotations

from p2psip.media.relay import Leg


class _Pair:
    def __init__(self, opener: RecordingOpener) -> None:
        self.opener = opener
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.opener.open_count -= 1


class RecordingOpener:
    """Counts open pairs of legs; ``fail`` makes the next bind fail as a busy port would."""

    def __init__(self) -> None:
        self.open_count = 0
        self.legs: list[tuple[Leg, Leg]] = []
        self.fail = False

    def open_pair(self, first: Leg, second: Leg) -> _Pair:
        if self.fail:
            raise OSError("Address already in use")
        self.open_count += 1
        self.legs.append((first, second))
        return _Pair(self)
