"""
Imports point one way (the layers of docs/architecture.md).

The overlay knows nothing of SIP or of the usages built on it; the SIP
layer reaches the ring only through ``p2psip.interfaces`` and the usage
structures in ``p2psip.usages``; NAT traversal calls up to neither;
nothing below the roles imports them.
These tests read the sources, so a forbidden import fails here even when
no test happens to execute it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import p2psip

PACKAGE = Path(p2psip.__file__).resolve().parent

#: package folder -> the p2psip packages its modules must not import.
FORBIDDEN = {
    "overlay": ("p2psip.sip", "p2psip.usages", "p2psip.roles", "p2psip.web", "p2psip.cli"),
    "usages": ("p2psip.sip", "p2psip.roles", "p2psip.web", "p2psip.cli", "p2psip.nat"),
    "sip": ("p2psip.overlay", "p2psip.roles", "p2psip.web", "p2psip.cli", "p2psip.media"),
    "media": ("p2psip.overlay", "p2psip.roles", "p2psip.web", "p2psip.cli", "p2psip.nat"),
    "util": ("p2psip.overlay", "p2psip.sip", "p2psip.usages", "p2psip.roles", "p2psip.nat"),
    # NAT traversal serves the overlay and SIP layers; it never calls up to them.
    "nat": (
        "p2psip.overlay",
        "p2psip.sip",
        "p2psip.usages",
        "p2psip.roles",
        "p2psip.web",
        "p2psip.cli",
    ),
}

#: Sans-IO codecs and classifiers: values in, values out, nothing from Twisted.
SANS_IO = (
    "nat/stun.py",
    "nat/control_protocol.py",
    "nat/control_auth.py",
    "nat/port_allocation.py",
    "media/sdp.py",
    "media/relay.py",
    "media/sessions.py",
)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name an ``import`` or ``from ... import`` in ``path`` names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


class ImportDirectionTests(SynchronousTestCase):
    def test_layers(self) -> None:
        """No module imports a package above its own layer."""
        wrong = []
        for folder, forbidden in FORBIDDEN.items():
            for path in sorted((PACKAGE / folder).rglob("*.py")):
                for name in sorted(imported_modules(path)):
                    if any(name == f or name.startswith(f + ".") for f in forbidden):
                        wrong.append(f"{path.relative_to(PACKAGE)} imports {name}")
        self.assertEqual(wrong, [])

    def test_sans_io_modules(self) -> None:
        """The NAT codecs and the port classifier import nothing from Twisted."""
        wrong = [
            f"{module} imports {name}"
            for module in SANS_IO
            for name in sorted(imported_modules(PACKAGE / module))
            if name == "twisted" or name.startswith("twisted.")
        ]
        self.assertEqual(wrong, [])

    def test_reader_sees_imports(self) -> None:
        """The check reads both import forms (so an empty result above means something)."""
        names = imported_modules(PACKAGE / "usages" / "sip.py")
        self.assertIn("p2psip.overlay.codec", names)
        self.assertIn("p2psip.overlay.codec.DecodeError", names)
