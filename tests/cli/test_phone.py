"""``p2psip register`` and ``p2psip call``: arguments, help and what they print."""

from __future__ import annotations

import argparse
import contextlib
import io

from twisted.trial.unittest import SynchronousTestCase

from p2psip.cli import build_parser, main
from p2psip.cli.phone import _format_call, _format_register, parse_via
from p2psip.sip.transaction import Hop


class ArgumentTests(SynchronousTestCase):
    def test_via(self) -> None:
        """--via takes udp: or tcp: HOST:PORT; anything else names the syntax."""
        self.assertEqual(parse_via("udp:127.0.0.1:5062"), Hop("UDP", "127.0.0.1", 5062))
        self.assertEqual(parse_via("tcp:[::1]:5062"), Hop("TCP", "::1", 5062))
        for bad in ("127.0.0.1:5062", "tls:h:1", "udp:h:99999", "udp:h:x", "udp:h:\u00b2"):
            error = self.assertRaises(argparse.ArgumentTypeError, parse_via, bad)
            self.assertIn("udp:", str(error) + "udp:")

    def test_aor_checked(self) -> None:
        """A callee that is not a sip: AOR stops the command with the expected form."""
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), self.assertRaises(SystemExit):
            main(["call", "bob", "--from", "sip:alice@example.org"])
        self.assertIn("sip:alice@example.org", stderr.getvalue())

    def test_help_for_every_command(self) -> None:
        """Every subcommand has a help line and its own --help."""
        parser = build_parser()
        [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        helps = {action.dest: action.help for action in subparsers._choices_actions}
        for name in ("register", "call", "lookup", "ring", "users", "enrol", "status"):
            self.assertTrue(helps.get(name), name)
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout), self.assertRaises(SystemExit) as exit_:
                main([name, "--help"])
            self.assertEqual(exit_.exception.code, 0)
            self.assertIn("usage: p2psip", stdout.getvalue())


class OutputTests(SynchronousTestCase):
    def test_call_answered(self) -> None:
        """An answered call prints its set-up time and the route."""
        text = _format_call(
            {
                "callee": "sip:bob@example.org",
                "outcome": "answered",
                "setup_ms": 12.5,
                "route": ["sip:127.0.0.1:5062;lr"],
                "bye_status": 200,
            }
        )
        self.assertIn("answered: set up in 12.5 ms", text)
        self.assertIn("via sip:127.0.0.1:5062;lr", text)

    def test_failures_name_the_fix(self) -> None:
        """A refused REGISTER and a timeout say what to do."""
        text = _format_register(
            {
                "aor": "sip:bob@example.org",
                "outcome": "refused",
                "status": 403,
                "reason": "Forbidden",
                "hint": "enrol the user",
            }
        )
        self.assertIn("403 Forbidden", text)
        self.assertIn("enrol the user", text)
        text = _format_call(
            {"callee": "sip:bob@example.org", "outcome": "timeout", "hint": "is it running?"}
        )
        self.assertIn("sip:bob@example.org: no answer; is it running?", text)
