"""The roles' log level: events below it are dropped before they are built."""

from __future__ import annotations

from twisted.logger import LogLevel, LogPublisher
from twisted.plugins import p2psip_roles
from twisted.trial.unittest import SynchronousTestCase

from p2psip.config import RoleOptions
from p2psip.roles import peer
from p2psip.util.logs import Logger, log_level, parse_log_level, set_log_level
from p2psip.util.reactor import role_owns_process


class Emitter:
    log = Logger()


class LogLevelTests(SynchronousTestCase):
    def setUp(self) -> None:
        before = log_level()
        self.addCleanup(set_log_level, before)
        # The plugin makes a giving-up role end the process: not this one.
        self.addCleanup(role_owns_process, False)
        self.events: list[dict[str, object]] = []
        publisher = LogPublisher(self.events.append)
        Emitter.log = Logger(observer=publisher)

    def test_every_level_until_one_is_set(self) -> None:
        """Library use and tests see debug lines: until a role sets a level, it is debug."""
        self.assertIs(log_level(), LogLevel.debug)
        Emitter().log.debug("one {n}", n=1)
        self.assertEqual([e["log_format"] for e in self.events], ["one {n}"])

    def test_below_the_level_is_dropped(self) -> None:
        """At info, debug events never reach an observer; info and above do."""
        set_log_level(LogLevel.info)
        emitter = Emitter()
        emitter.log.debug("per request")
        emitter.log.info("started")
        emitter.log.warn("careful")
        emitter.log.error("broken")
        self.assertEqual(
            [e["log_level"] for e in self.events], [LogLevel.info, LogLevel.warn, LogLevel.error]
        )

    def test_failures_follow_the_level(self) -> None:
        """Logger.failure goes through emit, so it obeys the level too (critical by default)."""
        set_log_level(LogLevel.error)
        try:
            raise ValueError("boom")
        except ValueError:
            Emitter().log.failure("handler failed")
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.events[0]["log_level"], LogLevel.critical)

    def test_class_access_names_the_class(self) -> None:
        """As a descriptor it is still Twisted's: the namespace is the class's."""
        self.assertIsInstance(Emitter.log, Logger)
        self.assertEqual(Emitter.log.namespace, f"{__name__}.Emitter")

    def test_parse(self) -> None:
        self.assertEqual(parse_log_level(" INFO "), LogLevel.info)
        self.assertEqual(parse_log_level("warning"), LogLevel.warn)
        with self.assertRaises(ValueError) as raised:
            parse_log_level("loud")
        self.assertIn("debug, info, warn, error, critical", str(raised.exception))


class PluginTests(SynchronousTestCase):
    """The twistd plugin sets the process's level from the role's --log-level."""

    def build(self, *argv: str) -> None:
        before = log_level()
        self.addCleanup(set_log_level, before)
        # The plugin makes a giving-up role end the process: not this one.
        self.addCleanup(role_owns_process, False)
        options = peer.Options()
        options.find_default_address = lambda family: "192.0.2.61"  # type: ignore[method-assign]
        arguments = ["--insecure", "--bootstrap", "tcp:192.0.2.1:6084", *argv]
        options.parseOptions([*arguments, "--data-dir", self.mktemp()])
        p2psip_roles.peer.makeService(options)

    def test_info_by_default(self) -> None:
        self.build()
        self.assertIs(log_level(), LogLevel.info)

    def test_debug_is_set_and_warned_of(self) -> None:
        warnings: list[dict[str, object]] = []
        self.patch(p2psip_roles.log, "observer", warnings.append)
        self.build("--log-level", "debug")
        self.assertIs(log_level(), LogLevel.debug)
        self.assertIn("--log-level debug", str(warnings[0]["log_format"]))


class Options(RoleOptions):
    """A role's options with nothing of its own: every role's base gives --log-level."""

    role = "demo"


class LogLevelOptionTests(SynchronousTestCase):
    def test_default_is_info(self) -> None:
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["log-level"], LogLevel.info)

    def test_from_the_config_file(self) -> None:
        options = Options()
        options.use_config_text("[demo]\nlog-level = debug\n")
        options.parseOptions([])
        self.assertEqual(options["log-level"], LogLevel.debug)
