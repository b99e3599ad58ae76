"""The replay window on its own: timed transaction IDs, copies, the window and the watermark."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.replay import (
    Freshness,
    ReplayWindow,
    timed_transaction_id,
    transaction_age_seconds,
)

NOW = 1_767_225_600.0
ALICE, BOB = 0xA11CE, 0xB0B


class TimedTransactionIdTests(SynchronousTestCase):
    def test_time_in_the_high_half(self) -> None:
        """The high 32 bits hold the whole seconds, the low 32 the sequence number."""
        transaction_id = timed_transaction_id(NOW + 0.9, 7)
        self.assertEqual(transaction_id >> 32, int(NOW) & 0xFFFFFFFF)
        self.assertEqual(transaction_id & 0xFFFFFFFF, 7)

    def test_age_both_ways_and_across_the_wrap(self) -> None:
        """Ages are signed seconds, and survive the 32-bit counter wrapping."""
        sent = timed_transaction_id(NOW, 1)
        self.assertEqual(transaction_age_seconds(sent, NOW + 5), 5)
        self.assertEqual(transaction_age_seconds(sent, NOW - 5), -5)
        just_before_wrap = timed_transaction_id(2**32 - 2, 1)
        self.assertEqual(transaction_age_seconds(just_before_wrap, 2**32 + 3), 5)


class ReplayWindowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.window = ReplayWindow(window_seconds=60, capacity=4)

    def test_a_copy_is_refused_and_other_signers_are_not_confused(self) -> None:
        """The same (signer, id) twice is a replay; the same id from another signer is not."""
        transaction_id = timed_transaction_id(NOW, 1)
        self.assertEqual(self.window.admit(ALICE, transaction_id, NOW), Freshness.FRESH)
        self.assertEqual(self.window.admit(ALICE, transaction_id, NOW + 30), Freshness.REPLAYED)
        self.assertEqual(self.window.admit(BOB, transaction_id, NOW + 30), Freshness.FRESH)

    def test_outside_the_window_either_way(self) -> None:
        """An id more than the window old, or from more than the window ahead, is refused."""
        self.assertEqual(
            self.window.admit(ALICE, timed_transaction_id(NOW - 61, 1), NOW),
            Freshness.OUT_OF_WINDOW,
        )
        self.assertEqual(
            self.window.admit(ALICE, timed_transaction_id(NOW + 61, 1), NOW),
            Freshness.OUT_OF_WINDOW,
        )
        self.assertEqual(
            self.window.admit(ALICE, timed_transaction_id(NOW - 60, 1), NOW), Freshness.FRESH
        )

    def test_memory_expires_with_the_window(self) -> None:
        """Remembered ids go once their time has left the window, and a copy is then refused by time."""
        transaction_id = timed_transaction_id(NOW, 1)
        self.window.admit(ALICE, transaction_id, NOW)
        self.assertEqual(
            self.window.admit(ALICE, timed_transaction_id(NOW + 61, 2), NOW + 61), Freshness.FRESH
        )
        self.assertEqual(len(self.window), 1)
        self.assertEqual(
            self.window.admit(ALICE, transaction_id, NOW + 61), Freshness.OUT_OF_WINDOW
        )

    def test_a_full_table_forgets_the_oldest_and_refuses_up_to_it(self) -> None:
        """Past its capacity the oldest id goes, and every id as old or older is refused from then on."""
        for second in range(5):
            verdict = self.window.admit(ALICE, timed_transaction_id(NOW + second, 1), NOW + 5)
            self.assertEqual(verdict, Freshness.FRESH)
        self.assertEqual(len(self.window), 4)
        self.assertEqual(self.window.watermark, int(NOW))
        # The forgotten id cannot come back, nor can a new one as old.
        self.assertEqual(
            self.window.admit(ALICE, timed_transaction_id(NOW, 1), NOW + 5), Freshness.FORGOTTEN
        )
        self.assertEqual(
            self.window.admit(BOB, timed_transaction_id(NOW, 9), NOW + 5), Freshness.FORGOTTEN
        )
        self.assertEqual(
            self.window.admit(BOB, timed_transaction_id(NOW + 1, 9), NOW + 5), Freshness.FRESH
        )

    def test_watermark_leaves_with_the_window(self) -> None:
        """Once the watermark's time is out of the window, time alone refuses what it covered."""
        for second in range(5):
            self.window.admit(ALICE, timed_transaction_id(NOW + second, 1), NOW + 5)
        self.window.admit(BOB, timed_transaction_id(NOW + 70, 1), NOW + 70)
        self.assertIsNone(self.window.watermark)

    def test_bad_sizes(self) -> None:
        """A window needs a positive length and room for one id."""
        self.assertRaises(ValueError, ReplayWindow, 0, 10)
        self.assertRaises(ValueError, ReplayWindow, 60, 0)
