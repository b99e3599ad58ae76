"""
Headless Chromium for the tests of the pages: its command line, and a
reader for the DOM it dumps once the page's script ran.

The flags keep Chromium on loopback (every other host name resolves to
nothing) and switch off its own traffic (updates, metrics, sync,
safe-browsing pings); each run gets a fresh profile directory, which
the caller provides.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

#: Loopback only, and none of the browser's own traffic (updates, metrics, sync).
#: No sandbox: CI runs the tests as root, where Chromium's sandbox cannot
#: start, and the only page loaded is our own, from loopback.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
#: Virtual milliseconds Chromium runs the page before it dumps or shoots: the first poll.
FIRST_POLL_MS = 4000


class Element:
    """One element of the dumped DOM: its tag, attributes and own text."""

    def __init__(self, tag: str, attributes: dict[str, str]) -> None:
        self.tag = tag
        self.attributes = attributes
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set(self.attributes.get("class", "").split())


class DomReader(HTMLParser):
    """Every element of the dumped DOM with its attributes and its own text."""

    VOID = {"meta", "input", "br", "img", "link"}

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1].text += data

    def by_id(self, element_id: str) -> Element:
        [element] = [e for e in self.elements if e.attributes.get("id") == element_id]
        return element

    def with_class(self, tag: str, name: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and name in e.classes]


def chromium_arguments(
    profile: Path, url: str, *extra: str, budget_ms: int = FIRST_POLL_MS
) -> list[str]:
    """The arguments (after the program) of one run: ``extra`` is the action (``--dump-dom``, ``--screenshot=...``)."""
    return [
        *CHROMIUM_FLAGS,
        f"--virtual-time-budget={budget_ms}",
        f"--user-data-dir={profile}",
        *extra,
        url,
    ]


def drawn(dom: DomReader, kind: str, attribute: str) -> set[tuple[str, str]]:
    """(peer, ``attribute``) of the picture's lines of class ``kind`` (not the legend's samples)."""
    return {
        (line.attributes["data-peer"], line.attributes[attribute])
        for line in dom.with_class("path", kind)
        if "data-peer" in line.attributes
    }
