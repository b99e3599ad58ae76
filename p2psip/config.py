"""
Role options that an operator can give on the command line or in an INI file.

Every role (``twistd p2psip-peer`` and friends) takes the same kind of
options, and an operator wants to keep them in ``/etc/p2psip/ROLE.ini``
rather than in a systemd unit.  ``RoleOptions`` is a ``twisted.python.usage``
``Options`` that adds ``--config FILE``: the file's ``[ROLE]`` section holds
keys named like the long options::

    [peer]
    overlay-name = example.org
    bootstrap = tcp:198.51.100.1:6084
                tcp:198.51.100.2:6084
    update-interval = 60
    verbose = yes

Precedence is command line, then file, then the declared defaults.  Options
listed in ``repeatable`` may be given several times on the command line and
hold whitespace- or newline-separated lists in the file; they are always
lists.  Mistakes are ``ConfigError`` (a ``UsageError``, so twistd prints it
and exits) whose message names the file, the section, the key and the fix,
because an operator reading a boot log has nothing else to go on.
"""

from __future__ import annotations

import configparser
import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from twisted.internet import endpoints
from twisted.logger import LogLevel
from twisted.python import reflect, usage
from twisted.python.util import padTo

from p2psip.util.logs import LOG_LEVEL_NAMES, parse_log_level

#: Words a flag accepts in a configuration file (compared case-insensitively).
TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "off", "0"})

#: Options that make sense only on the command line.
_COMMAND_LINE_ONLY = frozenset({"help", "version", "config"})


class ConfigError(usage.UsageError):
    """A configuration file is unreadable, malformed, or sets something the role does not know."""


def positive_int(text: str) -> int:
    """Coercer for counts and whole seconds that must be at least 1."""
    value = int(text)
    if value <= 0:
        raise ValueError(f"{value} is not greater than zero")
    return value


positive_int.coerceDoc = "a whole number greater than zero"  # type: ignore[attr-defined]


def positive_float(text: str) -> float:
    """Coercer for intervals and timeouts in seconds, which must be above zero."""
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{text} is not a finite number greater than zero")
    return value


positive_float.coerceDoc = "a number greater than zero"  # type: ignore[attr-defined]


def non_negative_float(text: str) -> float:
    """Coercer for rates and limits where 0 means off."""
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{text} is not a finite number of zero or more")
    return value


non_negative_float.coerceDoc = "a number, 0 or more"  # type: ignore[attr-defined]


def fraction(text: str) -> float:
    """Coercer for shares from 0 (off, where that is what 0 means) to 1."""
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError(f"{text} is not a number from 0 to 1")
    return value


fraction.coerceDoc = "a number from 0 to 1"  # type: ignore[attr-defined]


def non_negative_int(text: str) -> int:
    """Coercer for counts where 0 means off."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{value} is below zero")
    return value


non_negative_int.coerceDoc = "a whole number, 0 or more"  # type: ignore[attr-defined]


# serverFromString/clientFromString only store the reactor while parsing, so
# checking a description needs none; this stands in for it.
_NO_REACTOR = object()


def server_endpoint(text: str) -> str:
    """
    Coercer for listening addresses (``tcp:6084``, ``tcp:8084:interface=127.0.0.1``).

    It checks that Twisted can parse the description, so a typo stops the
    role at startup with the option's name instead of a traceback later,
    and returns the text unchanged for ``strports``.  ``systemd:``
    descriptions are only checked when the role starts, since they need
    the sockets systemd passes in.
    """
    if text.split(":", 1)[0] == "systemd":
        return text
    try:
        endpoints.serverFromString(_NO_REACTOR, text)
    except Exception as e:
        raise usage.UsageError(
            f"{text!r} is not a listening endpoint string ({e}); "
            "write for example tcp:6084 or tcp:8084:interface=127.0.0.1"
        ) from None
    return text


def client_endpoint(text: str) -> str:
    """Coercer for addresses to connect to (``tcp:198.51.100.1:6084``), checked like server_endpoint."""
    try:
        endpoints.clientFromString(_NO_REACTOR, text)
    except Exception as e:
        raise usage.UsageError(
            f"{text!r} is not a client endpoint string ({e}); "
            "write for example tcp:198.51.100.1:6084 or tcp:host=boot.example.org:port=6084"
        ) from None
    return text


def _describe_coercer(coerce: Callable[[str], object]) -> str:
    """Say in words what a coercer accepts, for error messages."""
    if coerce is int:
        return "an integer"
    if coerce is float:
        return "a number"
    doc = getattr(coerce, "coerceDoc", "")
    return str(doc) if doc else f"a value {getattr(coerce, '__name__', 'the option')} accepts"


def _log_level_option(text: str) -> LogLevel:
    return parse_log_level(text)


_log_level_option.coerceDoc = f"one of {', '.join(LOG_LEVEL_NAMES)}"  # type: ignore[attr-defined]


def _normalise_key(key: str) -> str:
    return key.strip().lower().replace("_", "-")


class RoleOptions(usage.Options):
    """
    Base class of every role's ``Options``: ``--config FILE`` plus repeatable options.

    Subclasses set ``role`` (the INI section they read), declare
    ``optParameters``/``optFlags`` as usual, list in ``repeatable`` the
    parameters that may be given several times, and call
    ``super().postOptions()`` first in their own ``postOptions`` (that is
    where the file is read).  A repeatable parameter's declared default may
    be None (empty list), a whitespace-separated string or a list.
    """

    role: ClassVar[str] = ""
    repeatable: ClassVar[tuple[str, ...]] = ()

    optParameters: list[list[Any]] = [
        [
            "log-level",
            None,
            "info",
            "Lowest level of this role's log lines: debug, info, warn, error or critical. "
            "debug adds lines per request and message (for a short session: they cost CPU "
            "and name peers' addresses in full).",
            _log_level_option,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self._config_path: str | None = None
        self._config_text: tuple[str, str] | None = None
        self._given: set[str] = set()

        # Twisted's optParameters rows: [long, short, default, doc, coerce], padded.
        parameters: list[list[object]] = []
        reflect.accumulateClassList(self.__class__, "optParameters", parameters)
        self._coercers: dict[str, Callable[[str], object]] = {}
        for parameter in parameters:
            long_name, _short, _default, _doc, coerce = padTo(5, parameter)
            assert isinstance(long_name, str) and (coerce is None or callable(coerce))
            self._coercers[long_name] = coerce if coerce is not None else str
        flags: list[list[object]] = []
        reflect.accumulateClassList(self.__class__, "optFlags", flags)
        self._flags = frozenset(padTo(3, flag)[0] for flag in flags)

        handlers: dict[str, object] = {}
        reflect.addMethodNamesToDict(self.__class__, handlers, "opt_")
        self._handler_takes_value = {
            name.replace("_", "-"): not usage.flagFunction(getattr(self, "opt_" + name))
            for name in handlers
        }

        for name in self.repeatable:
            if name not in self._coercers:
                raise TypeError(
                    f"{type(self).__name__}.repeatable names {name!r}, "
                    "which is not declared in optParameters"
                )
            self[name] = self._default_list(name, self[name])
            self.defaults[name] = list(self[name])
            self.docs[name] = (self.docs.get(name) or "").rstrip() + " (repeatable)"

        if self.role:
            self.docs["config"] = (
                f"INI file whose [{self.role}] section sets any long option; "
                "the command line wins over it."
            )

        self._original_dispatch = dict(self._dispatch)
        for name in self._original_dispatch:
            self._dispatch[name] = self._recording_dispatch(name)

    def _default_list(self, name: str, default: object) -> list[object]:
        if default is None:
            return []
        if isinstance(default, str):
            return [self._coercers[name](item) for item in default.split()]
        if not isinstance(default, Iterable):
            raise TypeError(f"the default of repeatable --{name} is neither a string nor a list")
        return list(default)

    def _recording_dispatch(self, name: str) -> Callable[..., None]:
        """Wrap an option's dispatcher so we know the command line set it."""
        inner = self._original_dispatch[name]

        def dispatch(option_name: str, value: str | None = None) -> None:
            if isinstance(inner, usage.CoerceParameter):
                if value is None:
                    raise usage.UsageError(f"--{option_name} requires a value")
                coerce = self._coercers.get(option_name, inner.coerce)
                try:
                    coerced = coerce(value)
                except ValueError:
                    raise usage.UsageError(
                        f"--{option_name} takes {_describe_coercer(coerce)}, not {value!r}"
                    ) from None
                if option_name in self.repeatable:
                    if option_name in self._given:
                        self[option_name].append(coerced)
                    else:
                        self[option_name] = [coerced]
                else:
                    self[option_name] = coerced
            else:
                inner(option_name, value)
            self._given.add(option_name)

        return dispatch

    def opt_config(self, path: str) -> None:
        """INI file whose [ROLE] section sets any long option; the command line wins over it."""
        if self._config_path is not None or self._config_text is not None:
            raise usage.UsageError("--config given twice; merge the files into one")
        self._config_path = path

    def use_config_text(self, text: str, source: str = "<string>") -> None:
        """Read the configuration from a string instead of a file (for tests and embedding)."""
        if self._config_path is not None or self._config_text is not None:
            raise usage.UsageError("a configuration is already set; give only one")
        self._config_text = (text, source)

    @property
    def config_source(self) -> str | None:
        """The file (or string source name) the options were read from, if any."""
        if self._config_text is not None:
            return self._config_text[1]
        return self._config_path

    def postOptions(self) -> None:
        if self._config_text is not None:
            self._apply_config(*self._config_text)
        elif self._config_path is not None:
            self._apply_config(self._read_config_file(self._config_path), self._config_path)
        for flag in self._flags:
            self[flag] = bool(self[flag])
        if isinstance(self["log-level"], str):  # the default, which usage does not coerce
            self["log-level"] = parse_log_level(self["log-level"])

    def _read_config_file(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as config_file:
                return config_file.read()
        except OSError as e:
            raise ConfigError(
                f"cannot read the configuration file {path}: {e.strerror or e}; "
                "check the --config path and its permissions"
            ) from None
        except UnicodeDecodeError as e:
            raise ConfigError(
                f"the configuration file {path} is not UTF-8 text ({e.reason} at byte {e.start}); "
                "fix the encoding or the --config path"
            ) from None

    def _parse_ini(self, text: str, source: str) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(
            # No DEFAULT section and no %-interpolation: endpoint strings may
            # contain '%' and a stray [DEFAULT] should be an error, not magic.
            default_section="\n",  # no header can spell a newline
            interpolation=None,
            # Only '=': endpoint strings are full of ':', and a list item
            # that lost its indentation must not parse as a key "tcp".
            delimiters=("=",),
            strict=True,
            comment_prefixes=("#", ";"),
            inline_comment_prefixes=("#",),
            empty_lines_in_values=False,
        )
        try:
            parser.read_string(text, source=source)
        except configparser.MissingSectionHeaderError as e:
            raise ConfigError(
                f"{source} line {e.lineno}: a key comes before any section header; "
                f"put the options under a [{self.role}] line"
            ) from None
        except configparser.DuplicateSectionError as e:
            raise ConfigError(
                f"section [{e.section}] appears twice in {source} (line {e.lineno}); "
                "merge the two into one"
            ) from None
        except configparser.DuplicateOptionError as e:
            raise ConfigError(
                f"key '{e.option}' is set twice in [{e.section}] of {source} (line {e.lineno}); "
                "keep one, and list several values on one key separated by spaces"
            ) from None
        except configparser.ParsingError as e:
            lines = ", ".join(str(lineno) for lineno, _line in e.errors)
            raise ConfigError(
                f"{source} line {lines}: not 'key = value', a [section] header, a # comment "
                "or an indented continuation line; fix or comment out that line"
            ) from None
        except configparser.Error as e:
            raise ConfigError(f"cannot parse {source}: {e}; fix the file") from None
        return parser

    def _known_keys(self) -> dict[str, str]:
        """Normalised key -> long option name, for every option a file may set."""
        known: dict[str, str] = {}
        for long_name in set(self.synonyms.values()):
            if len(long_name) > 1 and long_name not in _COMMAND_LINE_ONLY:
                known[_normalise_key(long_name)] = long_name
        return known

    def _apply_config(self, text: str, source: str) -> None:
        parser = self._parse_ini(text, source)
        for section in parser.sections():
            if section != self.role:
                raise ConfigError(
                    f"unknown section [{section}] in {source}; the {self.role} role reads "
                    f"only [{self.role}]: rename the section or use the file of the right role"
                )
        if not parser.has_section(self.role):
            return
        known = self._known_keys()
        for key, raw_value in parser.items(self.role):
            long_name = known.get(_normalise_key(key))
            where = f"[{self.role}] of {source}"
            if long_name is None:
                hint = difflib.get_close_matches(_normalise_key(key), sorted(known), n=1)
                did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(
                    f"unknown key '{key}' in {where}{did_you_mean}; "
                    f"known keys: {', '.join(sorted(known))}"
                )
            if long_name in self._given:
                continue
            self._apply_value(long_name, key, raw_value.strip(), where)

    def _apply_value(self, long_name: str, key: str, value: str, where: str) -> None:
        if long_name in self._flags:
            self[long_name] = self._parse_flag(key, value, where)
        elif long_name in self._coercers:
            coerce = self._coercers[long_name]
            items = value.split() if long_name in self.repeatable else [value]
            coerced = []
            for item in items:
                try:
                    coerced.append(coerce(item))
                except usage.UsageError as e:
                    # A coercer that validates (an endpoint string, say) and
                    # explains itself: keep its words, add where.
                    raise ConfigError(f"key '{key}' in {where}: {e}") from None
                except ValueError:
                    raise ConfigError(
                        f"key '{key}' in {where} takes {_describe_coercer(coerce)}, "
                        f"not {item!r}; fix the value"
                    ) from None
            self[long_name] = coerced if long_name in self.repeatable else coerced[0]
        else:
            handler = self._original_dispatch[long_name]
            try:
                if self._handler_takes_value.get(long_name, True):
                    handler(long_name, value)
                elif self._parse_flag(key, value, where):
                    handler(long_name, None)
            except ConfigError:
                raise
            except usage.UsageError as e:
                raise ConfigError(f"key '{key}' in {where}: {e}") from None

    @staticmethod
    def _parse_flag(key: str, value: str, where: str) -> bool:
        word = value.lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ConfigError(
            f"key '{key}' in {where} is a flag: write yes or no (or true/false, 1/0), not {value!r}"
        )


RoleOptionsT = TypeVar("RoleOptionsT", bound=RoleOptions)


def config_from_string(
    text: str,
    options_type: type[RoleOptionsT],
    argv: Sequence[str] = (),
    source: str = "<string>",
) -> RoleOptionsT:
    """
    Parse ``argv`` plus an INI text as a role would parse ``--config FILE``.

    ``options_type`` is the role's Options class (``p2psip.roles.peer.Options``).
    Raises ``ConfigError``/``UsageError`` exactly as the role would at startup.
    """
    options = options_type()
    options.use_config_text(text, source)
    options.parseOptions(list(argv))
    return options
