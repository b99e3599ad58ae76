"""
The fuzz harnesses (``fuzz/``) accept their own seeds, so that ``make fuzz``
starts from inputs that pass, and a change that breaks a harness or a
codec's promise on a realistic input fails here, without atheris.
"""

from __future__ import annotations

import importlib

from twisted.trial.unittest import SynchronousTestCase

from fuzz import common
from fuzz.run import HARNESSES


class SeedTests(SynchronousTestCase):
    def test_every_harness_passes_its_seeds(self) -> None:
        """Each harness runs each of its seeds without a crash or a broken promise."""
        self.patch(common, "atheris", None)  # no coverage instrumentation (and its chatter)
        counts = {}
        for name in HARNESSES:
            harness = importlib.import_module(f"fuzz.{name}")
            seeds = list(harness.seeds())
            for seed in seeds:
                harness.test_one_input(seed)
            counts[name] = len(seeds)
        self.assertEqual([name for name, count in counts.items() if count == 0], [])


class FoundInputTests(SynchronousTestCase):
    """Inputs with which a harness once found a bug, minimised, kept so it stays fixed."""

    def setUp(self) -> None:
        self.patch(common, "atheris", None)

    def test_sip_early_503_with_a_comma_in_a_bare_from(self) -> None:
        """
        An INVITE whose From is a bare URI with a comma in its user part,
        and a later header line the full parse refuses: the overloaded
        node's partial read copied that From into a 503 that did not parse
        (``fuzz/sip.py`` at 295,406 inputs).  Mode byte 0: one datagram.
        """
        from fuzz import sip

        datagram = (
            b"INVITE sip:user@example.com SIP/2.0\r\n"
            b"Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKfound1\r\n"
            b"From: sip:amazing,caller@example.net;tag=1298\r\n"
            b"To: <sip:user@example.com>\r\n"
            b"Call-ID: found.1\r\n"
            b"CSeq: 1 INVITE\r\n"
            b"Max-Forwards: 70\r\n"
            b"Bad Name: a space in a header name, which only the full parse refuses\r\n"
            b"\r\n"
        )
        sip.test_one_input(b"\x00" + datagram)
