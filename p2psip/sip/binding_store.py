"""
The bindings a super-node serves, kept across its restarts in
``DATA_DIR/sip-bindings.json``.

A phone's registration lives in two places: the overlay's
SIP-REGISTRATION entry (stored at other peers and handed over when a node
leaves), which tells the ring which super-node serves the phone, and that
super-node's own table of bindings with the flow each REGISTER came in on,
which is how it reaches the phone.  The second is in memory; without this
file a restarted super-node (an upgrade, a rolling restart) would answer
480 for its own phones until each registered again, up to a day later.

So the service writes the table here when it stops, and every few seconds
while it changes (a crash loses at most that much), and reads it back at
start.  Only bindings that have not expired come back, and only those the
super-node can still reach: a UDP flow is an address (through a NAT, the
path the phone keeps open), but a binding reached over a TCP or TLS
connection is dropped, since the connection is gone and the phone will
register again over a new one.

The file is JSON, written atomically with mode 0600 (it names users and
their addresses): ``{"version": 1, "bindings": [{"aor", "contact",
"expires_at", "q", "call_id", "cseq", "flow": [transport, host, port] or
null, "registered_from": [host, port] or null}, ...]}``.  A damaged file
or record is skipped with a count, never a crash: the phones register
again anyway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrs import frozen

from p2psip.sip.errors import SipParseError
from p2psip.sip.message import NameAddress
from p2psip.sip.registrar import LocalBinding
from p2psip.sip.transaction import Hop
from p2psip.util.files import DataFileError, read_bounded_text, write_atomically

FILE_NAME = "sip-bindings.json"
FORMAT_VERSION = 1
#: A larger file is not read (a super-node holds at most tens of thousands of bindings).
MAX_FILE_BYTES = 64 * 1024 * 1024


@frozen
class LoadedBindings:
    """What came back from the file, and how many records were left out, by reason."""

    bindings: list[LocalBinding]
    expired: int = 0
    connection_lost: int = 0
    malformed: int = 0


def encode_record(binding: LocalBinding) -> str:
    """One binding as the file's JSON (a flow that is not a ``Hop`` is written as null)."""
    flow = binding.flow
    record = {
        "aor": binding.aor,
        "contact": str(binding.contact),
        "expires_at": binding.expires_at,
        "q": binding.q,
        "call_id": binding.call_id,
        "cseq": binding.cseq,
        "flow": [flow.transport, flow.host, flow.port] if isinstance(flow, Hop) else None,
        "registered_from": list(binding.registered_from)
        if binding.registered_from is not None
        else None,
    }
    return json.dumps(record, separators=(",", ":"))


def _document(records: Iterable[str]) -> bytes:
    return (f'{{"version":{FORMAT_VERSION},"bindings":[' + ",".join(records) + "]}").encode("utf-8")


def encode_bindings(bindings: Iterable[LocalBinding]) -> bytes:
    """The file's bytes for ``bindings``."""
    return _document(encode_record(binding) for binding in bindings)


class SavedBindings:
    """
    The file's contents kept per AOR, so that saving re-encodes only the
    AORs that changed since the last save (a super-node may serve tens of
    thousands, and the save runs in the reactor's thread).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._records: dict[str, str] = {}
        self._unsaved = False

    def update(self, aor: str, bindings: Iterable[LocalBinding]) -> None:
        """Take ``aor``'s bindings now (none: it is dropped from the file)."""
        encoded = ",".join(encode_record(binding) for binding in bindings)
        if encoded:
            self._records[aor] = encoded
        else:
            self._records.pop(aor, None)
        self._unsaved = True

    def save(self) -> None:
        """
        Write the file when something changed since the last write.

        :raises OSError: when it cannot be written (the next save tries again).
        """
        if not self._unsaved:
            return
        write_atomically(self.path, _document(self._records.values()), 0o600)
        self._unsaved = False


def decode_bindings(text: str, now: float) -> LoadedBindings:
    """
    The bindings of a file's text that are live at ``now`` and reachable
    without a lost connection.

    :raises ValueError: when the text is not this file's format at all.
    """
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} bindings file")
    records = document.get("bindings")
    if not isinstance(records, list):
        raise ValueError("no list of bindings")
    bindings: list[LocalBinding] = []
    expired = lost = malformed = 0
    for record in records:
        try:
            binding = _binding(record)
        except (TypeError, ValueError, KeyError, SipParseError):
            malformed += 1
            continue
        if binding.expires_at <= now:
            expired += 1
        elif binding.reached_over_flow and isinstance(binding.flow, Hop) and binding.flow.reliable:
            lost += 1
        else:
            bindings.append(binding)
    return LoadedBindings(bindings, expired, lost, malformed)


def _binding(record: Any) -> LocalBinding:
    if not isinstance(record, dict):
        raise TypeError("a binding is an object")
    expires_at, q, cseq = record["expires_at"], record["q"], record["cseq"]
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in (expires_at, q)):
        raise TypeError("expires_at and q are numbers")
    if not math.isfinite(expires_at) or not 0 <= q <= 1:
        raise ValueError("expires_at must be finite and q between 0 and 1")
    if not isinstance(cseq, int) or isinstance(cseq, bool):
        raise TypeError("cseq is an integer")
    aor, call_id = record["aor"], record["call_id"]
    if not isinstance(aor, str) or not isinstance(call_id, str):
        raise TypeError("aor and call_id are strings")
    return LocalBinding(
        aor=aor,
        contact=NameAddress.parse(str(record["contact"]), "Contact"),
        expires_at=float(expires_at),
        q=float(q),
        call_id=call_id,
        cseq=cseq,
        flow=_flow(record.get("flow")),
        registered_from=_address(record.get("registered_from")),
    )


def _flow(value: Any) -> Hop | None:
    if value is None:
        return None
    transport, host, port = value
    if not isinstance(transport, str) or transport.upper() not in ("UDP", "TCP", "TLS"):
        raise ValueError("unknown transport")
    address = _address([host, port])
    assert address is not None
    return Hop(transport.upper(), *address)


def _address(value: Any) -> tuple[str, int] | None:
    if value is None:
        return None
    host, port = value
    if not isinstance(host, str) or not host or not isinstance(port, int):
        raise TypeError("an address is [host, port]")
    if not 0 < port < 65536:
        raise ValueError("port out of range")
    return host, port


def save_bindings(path: Path, bindings: Iterable[LocalBinding]) -> None:
    """Replace the file with ``bindings`` (mode 0600)."""
    write_atomically(path, encode_bindings(bindings), 0o600)


def load_bindings(path: Path, now: float) -> LoadedBindings:
    """
    The live, reachable bindings saved in ``path``; none when there is no file.

    :raises DataFileError: when the file cannot be read or is not a bindings file.
    """
    try:
        text, _signature = read_bounded_text(path, MAX_FILE_BYTES, "SIP bindings file")
    except FileNotFoundError:
        return LoadedBindings([])
    try:
        return decode_bindings(text, now)
    except ValueError as e:
        raise DataFileError(f"the SIP bindings file {path} is damaged ({e})") from None
