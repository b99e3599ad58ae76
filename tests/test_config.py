"""Tests for role options read from the command line and INI files."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.config import (
    ConfigError,
    RoleOptions,
    client_endpoint,
    config_from_string,
    positive_float,
    positive_int,
    server_endpoint,
)


def tcp_endpoint(text: str) -> str:
    """A validating coercer that explains itself with a UsageError."""
    if not text.startswith("tcp:"):
        raise usage.UsageError(f"{text!r} is not a tcp: endpoint; write tcp:HOST:PORT")
    return text


class SampleOptions(RoleOptions):
    """A role shaped like the peer: parameters, a flag, repeatable endpoints."""

    role: ClassVar[str] = "sample"
    repeatable: ClassVar[tuple[str, ...]] = ("bootstrap", "sip", "port")
    optParameters: ClassVar[list[list[Any]]] = [
        ["overlay-name", None, "p2psip.test", "Overlay name."],
        ["overlay", None, "tcp:6084", "RELOAD listener."],
        ["update-interval", None, 60, "Seconds between updates.", int],
        ["ping-interval", None, 15.0, "Seconds between pings.", float],
        ["bootstrap", None, None, "Bootstrap endpoint."],
        ["sip", None, "udp:5060 tcp:5060", "SIP listener."],
        ["port", None, None, "Some port.", int],
        ["data_dir", None, "/var/lib/p2psip/sample", "State directory."],
        ["replicas", None, 2, "Replica count.", positive_int],
        ["request-timeout", None, 15.0, "Seconds.", positive_float],
        ["control", None, "tcp:3479", "Control endpoint.", tcp_endpoint],
    ]
    optFlags: ClassVar[list[list[str]]] = [["verbose", "v", "Log more."]]

    def __init__(self) -> None:
        super().__init__()
        self.mediators: list[str] = []

    def opt_mediator(self, description: str) -> None:
        """A mediator endpoint (a handler, not a parameter)."""
        if not description.startswith("tcp:"):
            raise usage.UsageError(f"mediator must be a tcp: endpoint, not {description!r}")
        self.mediators.append(description)

    def postOptions(self) -> None:
        super().postOptions()
        if self["update-interval"] <= 0:
            raise usage.UsageError("--update-interval must be positive")


class PrecedenceTests(SynchronousTestCase):
    def test_defaults_without_config(self) -> None:
        """With neither flags nor a file, declared defaults apply and repeatables are lists."""
        options = SampleOptions()
        options.parseOptions([])
        self.assertEqual(options["overlay"], "tcp:6084")
        self.assertEqual(options["bootstrap"], [])
        self.assertEqual(options["sip"], ["udp:5060", "tcp:5060"])
        self.assertIs(options["verbose"], False)
        self.assertIsNone(options.config_source)

    def test_file_overrides_defaults(self) -> None:
        """A value in the file replaces the declared default."""
        options = config_from_string("[sample]\noverlay = tcp:7000\n", SampleOptions)
        self.assertEqual(options["overlay"], "tcp:7000")

    def test_command_line_overrides_file(self) -> None:
        """A command-line option wins over the same key in the file."""
        options = config_from_string(
            "[sample]\noverlay = tcp:7000\nupdate-interval = 5\n",
            SampleOptions,
            ["--overlay", "tcp:8000"],
        )
        self.assertEqual(options["overlay"], "tcp:8000")
        self.assertEqual(options["update-interval"], 5)

    def test_command_line_flag_wins_over_file_no(self) -> None:
        """A flag on the command line stays set even if the file says no."""
        options = config_from_string("[sample]\nverbose = no\n", SampleOptions, ["-v"])
        self.assertIs(options["verbose"], True)

    def test_flag_words(self) -> None:
        """Flags in the file accept yes/no/true/false/1/0 in any case."""
        for word, expected in [
            ("yes", True),
            ("TRUE", True),
            ("1", True),
            ("no", False),
            ("False", False),
            ("0", False),
        ]:
            options = config_from_string(f"[sample]\nverbose = {word}\n", SampleOptions)
            self.assertIs(options["verbose"], expected, word)

    def test_underscores_and_dashes_are_the_same_key(self) -> None:
        """Keys may use underscores where the option has dashes, and the reverse."""
        options = config_from_string(
            "[sample]\noverlay_name = example.org\ndata-dir = /srv/p2psip\n", SampleOptions
        )
        self.assertEqual(options["overlay-name"], "example.org")
        self.assertEqual(options["data_dir"], "/srv/p2psip")

    def test_real_file(self) -> None:
        """--config reads the named file."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as config_file:
            config_file.write("[sample]\noverlay-name = from.file\n")
        options = SampleOptions()
        options.parseOptions(["--config", path])
        self.assertEqual(options["overlay-name"], "from.file")
        self.assertEqual(options.config_source, path)

    def test_subclass_validation_sees_file_values(self) -> None:
        """postOptions of the subclass runs after the file is applied."""
        error = self.assertRaises(
            usage.UsageError, config_from_string, "[sample]\nupdate-interval = 0\n", SampleOptions
        )
        self.assertIn("--update-interval must be positive", str(error))

    def test_handler_options_from_file(self) -> None:
        """Keys that name an opt_ handler call it with the file value."""
        options = config_from_string("[sample]\nmediator = tcp:192.0.2.1:3479\n", SampleOptions)
        self.assertEqual(options.mediators, ["tcp:192.0.2.1:3479"])

    def test_handler_errors_name_the_file(self) -> None:
        """A UsageError from a handler fed from the file names the key and file."""
        error = self.assertRaises(
            ConfigError,
            config_from_string,
            "[sample]\nmediator = udp:1\n",
            SampleOptions,
            source="etc/sample.ini",
        )
        self.assertIn("'mediator' in [sample] of etc/sample.ini", str(error))

    def test_comments(self) -> None:
        """Whole-line # and ; comments and ' # ' after a value are ignored."""
        options = config_from_string(
            "# top\n[sample]\n; old style\noverlay = tcp:7000  # the listener\n"
            "bootstrap = tcp:a:1\n    tcp:b:2\n",
            SampleOptions,
        )
        self.assertEqual(options["overlay"], "tcp:7000")
        self.assertEqual(options["bootstrap"], ["tcp:a:1", "tcp:b:2"])

    def test_empty_file(self) -> None:
        """An empty file changes nothing."""
        options = config_from_string("", SampleOptions)
        self.assertEqual(options["overlay"], "tcp:6084")


class RepeatableTests(SynchronousTestCase):
    def test_repeated_on_command_line(self) -> None:
        """A repeatable option given twice on the command line collects both values."""
        options = SampleOptions()
        options.parseOptions(["--bootstrap", "tcp:a:1", "--bootstrap=tcp:b:2"])
        self.assertEqual(options["bootstrap"], ["tcp:a:1", "tcp:b:2"])

    def test_command_line_replaces_default_list(self) -> None:
        """Giving a repeatable option replaces its default list rather than extending it."""
        options = SampleOptions()
        options.parseOptions(["--sip", "udp:5070"])
        self.assertEqual(options["sip"], ["udp:5070"])

    def test_file_list_whitespace_and_newlines(self) -> None:
        """A repeatable key in the file takes a whitespace- and newline-separated list."""
        options = config_from_string(
            "[sample]\nbootstrap = tcp:a:1 tcp:b:2\n    tcp:c:3\n", SampleOptions
        )
        self.assertEqual(options["bootstrap"], ["tcp:a:1", "tcp:b:2", "tcp:c:3"])

    def test_command_line_replaces_file_list(self) -> None:
        """The command-line list replaces the file's list for the same key."""
        options = config_from_string(
            "[sample]\nbootstrap = tcp:a:1 tcp:b:2\n", SampleOptions, ["--bootstrap", "tcp:z:9"]
        )
        self.assertEqual(options["bootstrap"], ["tcp:z:9"])

    def test_repeatable_items_are_coerced(self) -> None:
        """The declared coercer applies to every item of a repeatable option."""
        options = config_from_string("[sample]\nport = 1 2 3\n", SampleOptions, [])
        self.assertEqual(options["port"], [1, 2, 3])
        options = SampleOptions()
        options.parseOptions(["--port", "4", "--port", "5"])
        self.assertEqual(options["port"], [4, 5])

    def test_defaults_are_not_shared(self) -> None:
        """Two Options instances do not share a default list."""
        first, second = SampleOptions(), SampleOptions()
        first.parseOptions(["--bootstrap", "tcp:a:1"])
        second.parseOptions([])
        self.assertEqual(second["bootstrap"], [])

    def test_repeatable_must_be_a_parameter(self) -> None:
        """Naming an undeclared option as repeatable is a programming error."""

        class Broken(RoleOptions):
            repeatable: ClassVar[tuple[str, ...]] = ("nothing",)

        self.assertRaises(TypeError, Broken)


class ErrorTests(SynchronousTestCase):
    def error(self, text: str, argv: list[str] | None = None) -> str:
        failure = self.assertRaises(
            ConfigError,
            config_from_string,
            text,
            SampleOptions,
            argv or [],
            source="etc/sample.ini",
        )
        return str(failure)

    def test_unknown_key(self) -> None:
        """An unknown key names the key, section, file, a suggestion and the known keys."""
        message = self.error("[sample]\nbootstrapp = tcp:a:1\n")
        self.assertIn("unknown key 'bootstrapp' in [sample] of etc/sample.ini", message)
        self.assertIn("did you mean 'bootstrap'?", message)
        self.assertIn(
            "known keys: bootstrap, control, data-dir, log-level, mediator, overlay,", message
        )

    def test_command_line_only_keys_are_unknown(self) -> None:
        """help, version and config cannot be set in the file."""
        self.assertIn("unknown key 'config'", self.error("[sample]\nconfig = x\n"))

    def test_unknown_section(self) -> None:
        """A section other than the role's is an error naming it and the file."""
        message = self.error("[peer]\noverlay = tcp:1\n")
        self.assertIn("unknown section [peer] in etc/sample.ini", message)

    def test_default_section_is_not_special(self) -> None:
        """[DEFAULT] is an unknown section rather than a silent fallback."""
        self.assertIn("[DEFAULT]", self.error("[DEFAULT]\noverlay = tcp:1\n"))

    def test_bad_integer(self) -> None:
        """An unparseable integer names the key, the file and what it takes."""
        message = self.error("[sample]\nupdate-interval = soon\n")
        self.assertIn("key 'update-interval' in [sample] of etc/sample.ini", message)
        self.assertIn("takes an integer, not 'soon'", message)

    def test_bad_float(self) -> None:
        """An unparseable float names what it takes."""
        self.assertIn("takes a number", self.error("[sample]\nping-interval = x\n"))

    def test_positive_coercers(self) -> None:
        """positive_int and positive_float refuse zero, negatives, NaN and infinity, saying why."""
        self.assertIn(
            "key 'replicas' in [sample] of etc/sample.ini takes a whole number greater than zero, "
            "not '0'",
            self.error("[sample]\nreplicas = 0\n"),
        )
        for bad in ("0", "-1", "nan", "inf", "x"):
            self.assertIn(
                "takes a number greater than zero",
                self.error(f"[sample]\nrequest-timeout = {bad}\n"),
            )
        options = config_from_string(
            "[sample]\nreplicas = 3\nrequest-timeout = 0.5\n", SampleOptions
        )
        self.assertEqual((options["replicas"], options["request-timeout"]), (3, 0.5))
        self.assertEqual(positive_int("7"), 7)
        self.assertEqual(positive_float("2.5"), 2.5)

    def test_validating_coercer_keeps_its_message(self) -> None:
        """A coercer's own UsageError reaches the operator with the file and key added."""
        self.assertEqual(
            self.error("[sample]\ncontrol = udp:1\n"),
            "key 'control' in [sample] of etc/sample.ini: 'udp:1' is not a tcp: endpoint; "
            "write tcp:HOST:PORT",
        )

    def test_bad_flag(self) -> None:
        """A flag with a word other than yes/no is an error naming the accepted words."""
        self.assertIn("write yes or no", self.error("[sample]\nverbose = maybe\n"))

    def test_key_before_section(self) -> None:
        """A key before any section header asks for the role's section."""
        self.assertIn("put the options under a [sample] line", self.error("overlay = tcp:1\n"))

    def test_duplicate_key(self) -> None:
        """A key given twice is an error rather than last-one-wins."""
        message = self.error("[sample]\noverlay = tcp:1\noverlay = tcp:2\n")
        self.assertIn("key 'overlay' is set twice in [sample]", message)

    def test_unindented_list_item(self) -> None:
        """A list item that lost its indentation is reported as a bad line, not a key."""
        message = self.error("[sample]\nbootstrap = tcp:a:1\ntcp:b:2\n")
        self.assertIn("etc/sample.ini line 3", message)
        self.assertIn("indented continuation line", message)

    def test_garbage_line(self) -> None:
        """A line that is not INI syntax is an error naming the line number."""
        self.assertIn("etc/sample.ini line 2", self.error("[sample]\njust words\n"))

    def test_missing_file(self) -> None:
        """An unreadable file is an error naming the path and --config."""
        options = SampleOptions()
        error = self.assertRaises(
            ConfigError, options.parseOptions, ["--config", os.path.join(self.mktemp(), "x.ini")]
        )
        self.assertIn("check the --config path", str(error))

    def test_not_utf8(self) -> None:
        """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
        path = self.mktemp()
        with open(path, "wb") as config_file:
            config_file.write(b"[sample]\noverlay = \xff\xfe\n")
        options = SampleOptions()
        error = self.assertRaises(ConfigError, options.parseOptions, ["--config", path])
        self.assertIn("not UTF-8", str(error))

    def test_config_twice(self) -> None:
        """--config given twice is a usage error."""
        options = SampleOptions()
        self.assertRaises(
            usage.UsageError, options.parseOptions, ["--config", "a", "--config", "b"]
        )

    def test_bad_integer_on_command_line(self) -> None:
        """A bad integer on the command line says which option and what it takes."""
        options = SampleOptions()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--update-interval=x"])
        self.assertEqual(str(error), "--update-interval takes an integer, not 'x'")

    def test_config_error_is_a_usage_error(self) -> None:
        """twistd prints UsageErrors as such, so ConfigError must be one."""
        self.assertTrue(issubclass(ConfigError, usage.UsageError))


class EndpointCoercerTests(SynchronousTestCase):
    def test_server_endpoints(self) -> None:
        """Valid listening descriptions come back unchanged."""
        for text in (
            "tcp:6084",
            "tcp:8084:interface=127.0.0.1",
            "tcp6:6084",
            "unix:/run/p2psip.sock",
            "systemd:domain=INET:index=0",
        ):
            self.assertEqual(server_endpoint(text), text)

    def test_bad_server_endpoints(self) -> None:
        """Typos and UDP descriptions are usage errors that show an example."""
        for text in ("tpc:6084", "tcp:abc", "", "udp:5060"):
            error = self.assertRaises(usage.UsageError, server_endpoint, text)
            self.assertIn("write for example tcp:6084", str(error))

    def test_client_endpoints(self) -> None:
        """Client descriptions with a host and port are accepted; ones without are not."""
        self.assertEqual(client_endpoint("tcp:198.51.100.1:6084"), "tcp:198.51.100.1:6084")
        self.assertEqual(client_endpoint("tcp:host=a.example:port=1"), "tcp:host=a.example:port=1")
        for text in ("tcp:a", "tcp:a:b", "x:1"):
            self.assertRaises(usage.UsageError, client_endpoint, text)

    def test_in_options(self) -> None:
        """As a declared coercer, a bad endpoint names the option, or the key and file."""

        class EndpointOptions(RoleOptions):
            role: ClassVar[str] = "endpoint-test"
            optParameters: ClassVar[list[list[Any]]] = [
                ["http", None, "tcp:8084:interface=127.0.0.1", "Status site.", server_endpoint]
            ]

        options = EndpointOptions()
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--http", "tcp:80x4"])
        self.assertIn("'tcp:80x4' is not a listening endpoint string", str(error))
        error = self.assertRaises(
            ConfigError,
            config_from_string,
            "[endpoint-test]\nhttp = tcp:80x4\n",
            EndpointOptions,
            source="etc/x.ini",
        )
        self.assertIn("key 'http' in [endpoint-test] of etc/x.ini: 'tcp:80x4' is not", str(error))


class HostileConfigTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("[]=:#; \n\t_-aspmlovertbcy0123456789\\%\x00\r")))
    def test_garbage_raises_only_usage_errors(self, text: str) -> None:
        """Any text either parses or raises a UsageError, never anything else."""
        try:
            config_from_string(text, SampleOptions)
        except usage.UsageError:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.text())
    def test_arbitrary_unicode(self, text: str) -> None:
        """Arbitrary Unicode after the header either parses or raises a UsageError."""
        try:
            config_from_string("[sample]\n" + text, SampleOptions)
        except usage.UsageError:
            pass


def _role_options(role: str) -> type[RoleOptions]:
    """The real Options class of ``role``, which the example file must satisfy."""
    from p2psip.roles import bootstrap, mediator, peer

    options: dict[str, type[RoleOptions]] = {
        "bootstrap": bootstrap.Options,
        "peer": peer.Options,
        "mediator": mediator.Options,
    }
    return options[role]


class ExampleConfigTests(SynchronousTestCase):
    """The annotated files in etc/ are accepted by the real roles, every key of them."""

    def example(self, role: str) -> str:
        from p2psip.testing import repository_root

        return (repository_root() / "etc" / f"{role}.ini").read_text(encoding="utf-8")

    def parse(self, role: str, text: str) -> RoleOptions:
        options = _role_options(role)()
        # The examples listen on every interface: keep this host's routes out of it.
        options.find_default_address = lambda family: "192.0.2.71"  # type: ignore[attr-defined]
        options.use_config_text(text, f"etc/{role}.ini")
        options.parseOptions([])
        return options

    def test_bootstrap_example(self) -> None:
        """etc/bootstrap.ini sets the documented bootstrap options."""
        options = self.parse("bootstrap", self.example("bootstrap"))
        self.assertEqual(options["overlay"], "tcp:6084")
        self.assertEqual(options["http"], "tcp:8084:interface=127.0.0.1")
        self.assertEqual(options["data-dir"], "/var/lib/p2psip/bootstrap")

    def test_peer_example(self) -> None:
        """etc/peer.ini lists two bootstraps and serves SIP on UDP and TCP with a users file."""
        text = self.example("peer").replace(
            "users = /etc/p2psip/users", "users = " + self.users_file()
        )
        options = self.parse("peer", text)
        self.assertEqual(options["bootstrap"], ["tcp:198.51.100.1:6084", "tcp:198.51.100.2:6084"])
        self.assertEqual(options["sip"], ["udp:5060", "tcp:5060"])
        self.assertEqual(options["http"], "tcp:8085:interface=127.0.0.1")

    def users_file(self) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("")
        return path
