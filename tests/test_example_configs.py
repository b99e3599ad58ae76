"""
Every example configuration in etc/ is accepted by its role, every key of it.

The files are read the way ``twist p2psip-ROLE --config FILE`` reads them:
the role is found by its section name among the twistd plugins (so a new
role's example is covered as soon as its plugin exists), and the file is
given to that role's own ``Options`` with ``--config``, ``postOptions``
included.  Each group of commented-out keys (``#key = value`` lines next to
each other, which the comments explain together) is switched on in turn
with its example value, then all of them at once.  Files the keys name
(users, secrets, certificates) are replaced by test files of the right
kind; nothing else in the text changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import repository_root
from tests.sip.tls_certificate import write_sip_certificate

#: A commented-out key: ``#key = value``, no space after the ``#``.
COMMENTED_KEY = re.compile(r"^#([a-z][a-z0-9-]*) = (.*)$")
#: A commented-out key written like prose (``# key = value``), which the
#: test would not switch on: the examples must not have any.
PROSE_KEY = re.compile(r"^#\s+([a-z][a-z0-9-]*)\s*=\s*\S")
SECTION = re.compile(r"^\[([a-z-]+)\]$", re.MULTILINE)

#: The address the roles' default-route lookup gives here, so that the
#: wildcard listeners of the examples do not depend on this host's routes.
HOST_ADDRESS = "192.0.2.70"


def example_files() -> list[Path]:
    return sorted((repository_root() / "etc").glob("*.ini"))


def role_options(role: str) -> type[usage.Options]:
    """The Options class of the twistd plugin ``p2psip-ROLE``."""
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    maker = makers.get(f"p2psip-{role}")
    if maker is None:
        raise AssertionError(f"no twistd plugin p2psip-{role} for etc/{role}.ini")
    options: type[usage.Options] = maker.options
    return options


def commented_groups(lines: list[str]) -> Iterator[list[int]]:
    """Line numbers of each run of adjacent commented-out keys."""
    group: list[int] = []
    for number, line in enumerate(lines):
        if COMMENTED_KEY.match(line):
            group.append(number)
            continue
        if group:
            yield group
        group = []
    if group:
        yield group


class ExampleFilesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.files: dict[str, str] = {}

    def test_every_role_has_an_example(self) -> None:
        """Every p2psip twistd plugin has its annotated example in etc/."""
        roles = {
            maker.tapname.removeprefix("p2psip-")
            for maker in getPlugins(IServiceMaker)
            if maker.tapname.startswith("p2psip-")
        }
        self.assertEqual(roles, {path.stem for path in example_files()})

    def test_shipped_files_load(self) -> None:
        """Each etc/*.ini as shipped starts its role's option parsing without an error."""
        for path in example_files():
            with self.subTest(path=path.name):
                self.parse(path, path.read_text(encoding="utf-8").splitlines())

    def test_each_commented_key_works(self) -> None:
        """Uncommenting any group of example keys, or all of them, still gives a file the role accepts."""
        checked = 0
        for path in example_files():
            lines = path.read_text(encoding="utf-8").splitlines()
            groups = list(commented_groups(lines))
            for group in [*groups, [n for g in groups for n in g]]:
                enabled = list(lines)
                for number in group:
                    enabled[number] = lines[number][1:]
                with self.subTest(path=path.name, keys=[lines[n] for n in group]):
                    self.parse(path, enabled)
                checked += len(group)
        self.assertGreater(checked, 40)

    def test_no_commented_key_looks_like_prose(self) -> None:
        """Commented-out keys are written #key = value, so that the test above switches them on."""
        for path in example_files():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                self.assertIsNone(
                    PROSE_KEY.match(line), f"{path.name} line {number}: write it as #key = value"
                )

    def test_promises_only_what_exists(self) -> None:
        """An example (or its unit) names the SIP gateway or the media relay only when its role has options for them."""
        features = {"gateway": "gateway", "media relay": "media", "relays media": "media"}
        for path in example_files():
            text = path.read_text(encoding="utf-8")
            unit = repository_root() / "etc" / "systemd" / f"p2psip-{path.stem}.service"
            if unit.exists():
                text += unit.read_text(encoding="utf-8")
            [role] = SECTION.findall(path.read_text(encoding="utf-8"))
            names = set(role_options(role)().synonyms.values())
            for words, option_part in features.items():
                if words in text.lower():
                    self.assertTrue(
                        any(option_part in name for name in names),
                        f"{path.name} or its unit promises a {words} that p2psip-{role} lacks",
                    )

    def parse(self, path: Path, lines: list[str]) -> usage.Options:
        text = "\n".join(lines) + "\n"
        [role] = SECTION.findall(text)
        for shipped, replacement in self.named_files().items():
            text = text.replace(shipped, replacement)
        config = Path(self.mktemp())
        config.write_text(text, encoding="utf-8")
        options = role_options(role)()
        if hasattr(options, "find_default_address"):
            options.find_default_address = lambda family: HOST_ADDRESS
        try:
            options.parseOptions(["--config", str(config)])
        except usage.UsageError as e:
            self.fail(f"{path.name} was refused: {e}")
        return options

    def named_files(self) -> dict[str, str]:
        """The files the examples name under /etc/p2psip, made once per test."""
        if not self.files:
            directory = Path(self.mktemp())
            directory.mkdir()
            certificate, key = write_sip_certificate(directory / "sip-tls")
            contents = {
                "users": "",
                "mediator-secret": "a node's own mediator secret\n",
                "mediator-secrets": "0123abcd a-client-secret\n",
                "enrol-password": "an enrolment password\n",
            }
            for name, content in contents.items():
                (directory / name).write_text(content, encoding="utf-8")
                self.files[f"/etc/p2psip/{name}\n"] = f"{directory / name}\n"
            self.files["/etc/p2psip/sip-tls-cert.pem"] = str(certificate)
            self.files["/etc/p2psip/sip-tls-key.pem"] = str(key)
        return self.files


def operations_guide() -> str:
    return (repository_root() / "docs" / "operations.md").read_text(encoding="utf-8")


def ring_option_rows() -> Iterator[tuple[list[str], str, str]]:
    """(keys, bootstrap cell, peer cell) of the ring roles' option table in docs/operations.md."""
    lines = iter(operations_guide().splitlines())
    for line in lines:
        if line.startswith("| key | bootstrap | peer |"):
            break
    next(lines)  # the |---| line
    for line in lines:
        if not line.startswith("|"):
            return
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        yield re.findall(r"`([a-z0-9-]+)`", cells[0]), cells[1], cells[2]


class OperationsGuideTests(SynchronousTestCase):
    """docs/operations.md names only keys the roles know, with the defaults they have."""

    def test_ini_examples_use_real_keys(self) -> None:
        """Every key in the guide's ```ini examples is an option of the section's role."""
        for block in re.findall(r"```ini\n(.*?)```", operations_guide(), re.DOTALL):
            [role] = SECTION.findall(block)
            names = set(role_options(role)().synonyms.values())
            for key in re.findall(r"^([a-z][a-z0-9_-]*)\s*=", block, re.MULTILINE):
                self.assertIn(key.replace("_", "-"), names, f"[{role}] {key} in the guide")

    def test_option_table_matches_the_roles(self) -> None:
        """The ring roles' option table lists real options, and its plain defaults are the roles' own."""
        rows = list(ring_option_rows())
        self.assertGreater(len(rows), 30)
        for role, column in (("bootstrap", 1), ("peer", 2)):
            options = role_options(role)()
            for row in rows:
                keys, cell = row[0], row[column]
                if not cell:
                    continue
                values = cell.split(", ") if len(keys) > 1 else [cell]
                for key, value in zip(keys, values, strict=False):
                    with self.subTest(role=role, key=key, documented=value):
                        self.assertIn(key, options.synonyms.values())
                        self.assertDocumentedDefault(options, key, value)

    def assertDocumentedDefault(self, options: usage.Options, key: str, value: str) -> None:
        default = options.defaults.get(key)
        if value == "none":
            self.assertIn(default, (None, []))
        elif value == "no":
            self.assertFalse(default)
        elif re.fullmatch(r"\d+(\.\d+)?", value):
            self.assertEqual(float(default), float(value))
        elif re.fullmatch(r"`[^`]+`", value) and default is not None:
            shown = " ".join(default) if isinstance(default, list) else str(default)
            self.assertEqual(shown, value.strip("`"))
