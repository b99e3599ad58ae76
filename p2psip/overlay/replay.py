"""
Replay protection for signed RELOAD messages: timed transaction IDs and a
bounded memory of the ones seen.

A RELOAD signature (RFC 6940 s6.3.4) covers the overlay, the transaction
ID and the message contents, but not the forwarding header, and a message
carries no timestamp.  Anyone who once received a signed message can
therefore send it again, to anyone, with a new destination list, and the
signature still holds.  What makes a copy recognisable is the transaction
ID, which is signed:

* **Timed transaction IDs.**  Our nodes put the sender's clock (whole
  seconds, the low 32 bits of the Unix time) in the high half of every
  64-bit transaction ID, and a per-node sequence number (from a random
  start) in the low half.  RFC 6940 s6.3.2 asks for random transaction
  IDs so that they are unique; the sequence keeps them unique for 2**32
  transactions per second, which randomness alone would not (two random
  32-bit halves collide every few minutes at a few thousand messages a
  second).
* **A window.**  A receiver refuses a request whose transaction ID's
  time lies more than ``window_seconds`` (60 s by default) from its own
  clock, and remembers every (signer, transaction ID) it accepted until
  that time has left the window: a copy within the window is refused as
  a replay, and a copy after it as out of the window.  *The nodes of a
  ring must therefore keep their clocks within the window of each other*
  (NTP is plenty); a node whose clock is off sees its requests vanish,
  and the receivers log the skew.
* **Bounded memory.**  At most ``capacity`` IDs are remembered.  When a
  flood fills the table, the IDs with the oldest time go, and from then on
  every ID at or before that time is refused (the *watermark*): forgetting
  an ID may cost a late, honest message, never let a replay through.
  The IDs are kept by the second their time names, each (signer, ID) as
  one integer, so an entry costs about 80 bytes and the window's seconds
  leave whole.

Answers need none of this: an answer must match one of our outstanding
transactions (:mod:`p2psip.overlay.transactions`), and the first answer
ends it, so a copy finds nothing to match.

Sans-IO: every call is given ``now``.
"""

from __future__ import annotations

import enum
import heapq

#: The transaction ID's high half holds the sender's clock, in seconds.
TIME_SHIFT = 32
_HALF = 1 << TIME_SHIFT
_HALF_MASK = _HALF - 1
_ID_MASK = (1 << 64) - 1

#: How far (seconds) a request's transaction-ID time may lie from our clock.
DEFAULT_WINDOW_SECONDS = 60.0
#: Transaction IDs remembered at once (about 80 bytes each, 4 MB in all).
DEFAULT_CAPACITY = 50_000


def timed_transaction_id(now: float, sequence: int) -> int:
    """The transaction ID for a message sent at ``now`` (seconds) with ``sequence``."""
    return ((int(now) & _HALF_MASK) << TIME_SHIFT) | (sequence & _HALF_MASK)


def transaction_age_seconds(transaction_id: int, now: float) -> int:
    """
    How many seconds before ``now`` the transaction ID says it was made
    (negative when it claims to come from our future).

    The time is 32 bits of seconds, so the difference is taken modulo
    2**32 and folded into [-2**31, 2**31): the arithmetic survives the
    counter wrapping (in 2106) as long as clocks agree within 68 years.
    """
    sent = transaction_id >> TIME_SHIFT
    difference = (int(now) - sent) & _HALF_MASK
    return difference - _HALF if difference >= _HALF // 2 else difference


class Freshness(enum.Enum):
    """What :meth:`ReplayWindow.admit` made of a request's transaction ID."""

    #: First time seen, within the window: accept (it is remembered now).
    FRESH = "fresh"
    #: Seen before from the same signer within the window.
    REPLAYED = "replayed"
    #: Its time lies outside now ± window: a stale copy, or a sender whose clock is off.
    OUT_OF_WINDOW = "out of window"
    #: Its time is at or before the watermark left by a full table.
    FORGOTTEN = "forgotten"


class ReplayWindow:
    """(signer, transaction ID) pairs accepted within the last window, bounded."""

    def __init__(
        self,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        if window_seconds <= 0 or capacity < 1:
            raise ValueError("a replay window needs a positive length and room for one entry")
        self.window_seconds = window_seconds
        self.capacity = capacity
        #: The second an ID claims -> the (signer << 64 | ID) seen with that time.
        self._by_second: dict[int, set[int]] = {}
        #: The seconds in ``_by_second``, oldest first (a heap).
        self._seconds: list[int] = []
        self._count = 0
        #: IDs with a time at or before this were forgotten to make room.
        self.watermark: int | None = None

    def __len__(self) -> int:
        return self._count

    def admit(self, signer: int, transaction_id: int, now: float) -> Freshness:
        """Whether a request from ``signer`` with ``transaction_id`` may be handled now."""
        age = transaction_age_seconds(transaction_id, now)
        if abs(age) > self.window_seconds:
            return Freshness.OUT_OF_WINDOW
        self._expire(now)
        sent = int(now) - age
        if self.watermark is not None and sent <= self.watermark:
            return Freshness.FORGOTTEN
        key = (signer << 64) | (transaction_id & _ID_MASK)
        seen = self._by_second.get(sent)
        if seen is None:
            seen = self._by_second[sent] = set()
            heapq.heappush(self._seconds, sent)
        elif key in seen:
            return Freshness.REPLAYED
        seen.add(key)
        self._count += 1
        while self._count > self.capacity:
            # Forget the oldest second whole: the watermark refuses all of
            # its IDs anyway, remembered or not.
            oldest = heapq.heappop(self._seconds)
            self._count -= len(self._by_second.pop(oldest))
            if self.watermark is None or oldest > self.watermark:
                self.watermark = oldest
        return Freshness.FRESH

    def _expire(self, now: float) -> None:
        """Forget IDs whose time has left the window: a copy of one is refused by time."""
        horizon = int(now) - self.window_seconds
        seconds = self._seconds
        while seconds and seconds[0] < horizon:
            self._count -= len(self._by_second.pop(heapq.heappop(seconds)))
        if self.watermark is not None and self.watermark < horizon:
            self.watermark = None
