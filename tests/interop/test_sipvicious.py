"""
sipvicious against a super-node on loopback: what a SIP scanner learns.

``svwar`` guesses user names by comparing each name's answer with the
answer to a made-up one; with REGISTER, OPTIONS and INVITE it must find
none of the real users (one of them even registered).  ``svcrack`` guesses
a user's password; the login throttle must keep it to the guesses a minute
it allows, so the right password, coming late in the list, is never
checked.  The super-node is the peer role's SIP service, built from its
real options (``--sip-digest-algorithms MD5``: sipvicious computes only
MD5) on a real UDP socket, its timers on the reactor; the tools are real
processes.  sipvicious comes from PyPI (the ``interop`` extra); a missing
tool skips, or fails with ``P2PSIP_REQUIRE_INTEROP=1``.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor, utils
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret, load_users
from p2psip.sip.digest import Verdict
from p2psip.sip.login_throttle import FAILURES_PER_SOURCE_PER_MINUTE
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.user_agent import SimpleUserAgent
from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, require_tool
from tests.integration.test_peer_sip_service import MemoryNode
from tests.roles.test_peer import parse

DOMAIN = "example.org"
NODE = 0xC0FFEE00000000000000000000000001
PASSWORDS = {"alice": "correct-horse", "bob": "battery-staple", "carol": "tr0ub4dor"}
#: Real users first, then names nobody has.
NAMES = ["alice", "bob", "carol", "mallory", "zz9plural", "1000", "admin", "oscar"]
WRONG_GUESSES = 40

log = Logger()


class SipviciousTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.directory = directory
        users = UsersFile.load(directory / "users", missing_ok=True)
        for name, password in PASSWORDS.items():
            users.set_password(f"sip:{name}@{DOMAIN}", password)
        users.save()
        options = parse(
            "--overlay-name",
            DOMAIN,
            "--sip",
            "udp:0:interface=127.0.0.1",
            "--users",
            str(directory / "users"),
            "--sip-digest-algorithms",
            "MD5",
            "--data-dir",
            str(directory / "data"),
        )
        config = options.config
        assert config.sip is not None
        os.makedirs(config.data_dir)
        stack = build_sip_stack(
            config.sip,
            MemoryNode(NODE, reactor),
            reactor,
            load_users(config.sip),
            load_or_create_secret(config.data_dir),
            "127.0.0.1",
        )
        self.service = SipService(stack, reactor, freeze_gc=False)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        assert self.service.advertised is not None
        self.port = self.service.advertised[1]

    def write(self, name: str, lines: list[str]) -> str:
        path = self.directory / name
        path.write_text("".join(line + "\n" for line in lines), encoding="ascii")
        return str(path)

    def run_tool(self, tool: str, arguments: list[str]) -> Deferred[tuple[bytes, bytes, int]]:
        """Run a sipvicious tool aimed at the super-node, bound to a free loopback port."""
        argv = [
            *arguments,
            "-P",
            str(free_port(socket.SOCK_DGRAM)),
            "-b",
            "127.0.0.1",
            "-x",
            "127.0.0.1",
            "--domain",
            DOMAIN,
            "-p",
            str(self.port),
            "127.0.0.1",
        ]
        result: Deferred[tuple[bytes, bytes, int]] = utils.getProcessOutputAndValue(
            tool, argv, env=os.environ, path=str(self.directory)
        )
        return result

    @inlineCallbacks
    def register_alice(self) -> Any:
        transport = SipTransport(reactor)
        yield transport.listen("udp:0:interface=127.0.0.1")
        self.addCleanup(transport.stop)
        assert self.service.advertised is not None
        agent = SimpleUserAgent(
            f"sip:alice@{DOMAIN}",
            PASSWORDS["alice"],
            transport,
            Hop("UDP", *self.service.advertised),
            reactor,
        )
        self.addCleanup(agent.stop)
        yield agent.register()

    @inlineCallbacks
    def scan(self, method: str) -> Any:
        """
        svwar with ``method``, once per name (real or made up), finds no user.

        svwar first asks for a random name to learn the "no such user"
        answer, then compares; an answer it has no rule for ends its scan,
        so each name gets a run of its own.
        """
        svwar = require_tool("sipvicious_svwar")
        yield self.register_alice()
        first_lines = set()
        for name in NAMES:
            dictionary = self.write(f"{name}.txt", [name])
            out, err, code = yield self.run_tool(svwar, ["--force", "-m", method, "-d", dictionary])
            output = (out + err).decode(errors="replace")
            log.info(
                "svwar -m {method} {name}: exit {code}\n{output}",
                method=method,
                name=name,
                code=code,
                output=output,
            )
            self.assertNotIn("exists", output, name)
            self.assertIn("found nothing", output, name)
            first_lines.update(
                line.split("\\r\\n", 1)[0].split("'", 1)[-1]
                for line in output.splitlines()
                if line.startswith("ERROR:TakeASip:Response:")
            )
        log.info(
            "svwar -m {method}: answers seen {lines}", method=method, lines=sorted(first_lines)
        )
        # Every name, made up or real (alice even registered), got the same answer.
        self.assertLessEqual(len(first_lines), 1)
        answered = sum(
            count
            for (counted, _), count in self.service.proxy.outcomes.items()
            if counted == method
        )
        self.assertGreaterEqual(answered, 2 * len(NAMES))

    def test_svwar_register(self) -> Any:
        """A REGISTER scan cannot tell users from made-up names: every name gets the same 401."""
        return self.scan("REGISTER")

    def test_svwar_options(self) -> Any:
        """An OPTIONS scan claiming our domain gets the same 407 for every name."""
        return self.scan("OPTIONS")

    def test_svwar_invite(self) -> Any:
        """An INVITE scan claiming our domain gets the same 407 for every name."""
        return self.scan("INVITE")

    @inlineCallbacks
    def test_svcrack_is_throttled(self) -> Any:
        """
        svcrack's guesses at alice's password are checked only as fast as the
        login throttle allows; the right one, 41st, is refused unchecked.
        """
        svcrack = require_tool("sipvicious_svcrack")
        authenticator = self.service.registrar.authenticator
        assert authenticator is not None
        verify = authenticator.verify
        checked: list[Verdict] = []

        def counting(*args: Any, **kwargs: Any) -> Verdict:
            verdict = verify(*args, **kwargs)
            checked.append(verdict)
            return verdict

        authenticator.verify = counting  # type: ignore[method-assign]
        guesses = [f"guess{number:03d}" for number in range(WRONG_GUESSES)]
        dictionary = self.write("passwords.txt", [*guesses, PASSWORDS["alice"]])
        started = time.monotonic()
        out, err, code = yield self.run_tool(svcrack, ["-u", "alice", "-d", dictionary])
        elapsed = time.monotonic() - started
        output = (out + err).decode(errors="replace")
        throttle = self.service.registrar.throttle
        allowed = FAILURES_PER_SOURCE_PER_MINUTE + elapsed * FAILURES_PER_SOURCE_PER_MINUTE / 60
        per_minute = len(checked) * 60 / max(elapsed, 60.0)
        log.info(
            "svcrack: {sent} guesses in {elapsed:.1f} s, {checked} checked, {refused} refused "
            "unchecked; at most {allowed:.1f} checks allowed in that time "
            "({limit} a minute from one address); {per_minute:.1f} checked guesses a minute",
            sent=WRONG_GUESSES + 1,
            elapsed=elapsed,
            checked=len(checked),
            refused=throttle.throttled,
            allowed=allowed,
            limit=FAILURES_PER_SOURCE_PER_MINUTE,
            per_minute=per_minute,
        )
        self.assertNotIn("The password for alice is", output, output)
        self.assertNotIn(Verdict.ACCEPTED, checked)
        self.assertLessEqual(len(checked), allowed + 1)
        self.assertGreater(throttle.throttled, 0)
