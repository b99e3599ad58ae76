"""
The bindings a super-node serves, kept across its restarts in the state
database (section ``sip-bindings`` of ``DATA_DIR/state.sqlite3``,
:mod:`p2psip.util.state_db`).

A phone's registration lives in two places: the overlay's
SIP-REGISTRATION entry (stored at other peers and handed over when a node
leaves), which tells the ring which super-node serves the phone, and that
super-node's own table of bindings with the flow each REGISTER came in on,
which is how it reaches the phone.  The second is in memory; without this
store a restarted super-node (an upgrade, a crash, a SIGKILL) would answer
480 for its own phones until each registered again, up to a day later.

So every AOR whose bindings changed is staged (one row per AOR, its
bindings as a JSON list) and committed with the state database's next
batch, once a second: a SIGKILL loses at most the last second's
REGISTERs.  At start the rows are read back.  Only bindings that have not
expired come back, and only those the super-node can still reach: a UDP
flow is an address (through a NAT, the path the phone keeps open), but a
binding reached over a TCP or TLS connection is dropped, since the
connection is gone and the phone will register again over a new one.

A record is ``{"aor", "contact", "expires_at", "q", "call_id", "cseq",
"flow": [transport, host, port] or null, "registered_from": [host, port]
or null, "instance", "reg_id"}`` (the last two for SIP Outbound, RFC
5626; absent in older records).  A damaged row or record is skipped with
a count, never a crash: the phones register again anyway.  The JSON file
earlier versions kept (``DATA_DIR/sip-bindings.json``) is read once, moved
into the database and removed.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from attrs import frozen

from p2psip.sip.errors import SipParseError
from p2psip.sip.message import NameAddress
from p2psip.sip.registrar import LocalBinding, Registrar
from p2psip.sip.transaction import Hop
from p2psip.util.files import DataFileError, read_bounded_text
from p2psip.util.logs import Logger
from p2psip.util.state_db import StateDatabase

#: The state database's section, one row per AOR.
SECTION = "sip-bindings"
#: The file earlier versions kept the bindings in (moved into the database at start).
LEGACY_FILE_NAME = "sip-bindings.json"
LEGACY_FORMAT_VERSION = 1
#: A larger legacy file is not read (a super-node holds at most tens of thousands of bindings).
MAX_LEGACY_FILE_BYTES = 64 * 1024 * 1024


@frozen
class LoadedBindings:
    """What came back from the file, and how many records were left out, by reason."""

    bindings: list[LocalBinding]
    expired: int = 0
    connection_lost: int = 0
    malformed: int = 0


def encode_record(binding: LocalBinding) -> dict[str, Any]:
    """One binding as its JSON record (a flow that is not a ``Hop`` is written as null)."""
    flow = binding.flow
    return {
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
        "instance": binding.instance,
        "reg_id": binding.reg_id,
    }


def encode_row(bindings: Iterable[LocalBinding]) -> bytes | None:
    """One AOR's row: its bindings as a JSON list (None when it has none: the row goes)."""
    records = [encode_record(binding) for binding in bindings]
    if not records:
        return None
    return json.dumps(records, separators=(",", ":")).encode("utf-8")


class _Tally:
    def __init__(self) -> None:
        self.bindings: list[LocalBinding] = []
        self.expired = self.lost = self.malformed = 0

    def take(self, records: Any, now: float) -> None:
        if not isinstance(records, list):
            self.malformed += 1
            return
        for record in records:
            try:
                binding = _binding(record)
            except (TypeError, ValueError, KeyError, SipParseError):
                self.malformed += 1
                continue
            if binding.expires_at <= now:
                self.expired += 1
            elif (
                binding.reached_over_flow
                and isinstance(binding.flow, Hop)
                and binding.flow.reliable
            ):
                self.lost += 1
            else:
                self.bindings.append(binding)

    def result(self) -> LoadedBindings:
        return LoadedBindings(self.bindings, self.expired, self.lost, self.malformed)


def decode_rows(rows: Mapping[str, bytes], now: float) -> LoadedBindings:
    """The bindings of the database's rows that are live at ``now`` and reachable."""
    tally = _Tally()
    for value in rows.values():
        try:
            records = json.loads(value)
        except (ValueError, UnicodeDecodeError):
            tally.malformed += 1
            continue
        tally.take(records, now)
    return tally.result()


def decode_legacy_file(text: str, now: float) -> LoadedBindings:
    """
    The live, reachable bindings of an earlier version's JSON file.

    :raises ValueError: when the text is not that file's format at all.
    """
    document = json.loads(text)
    if not isinstance(document, dict) or document.get("version") != LEGACY_FORMAT_VERSION:
        raise ValueError(f"not a version {LEGACY_FORMAT_VERSION} bindings file")
    records = document.get("bindings")
    if not isinstance(records, list):
        raise ValueError("no list of bindings")
    tally = _Tally()
    tally.take(records, now)
    return tally.result()


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
    instance, reg_id = record.get("instance"), record.get("reg_id")
    if instance is not None and not isinstance(instance, str):
        raise TypeError("instance is a string")
    if reg_id is not None and (not isinstance(reg_id, int) or isinstance(reg_id, bool)):
        raise TypeError("reg_id is an integer")
    return LocalBinding(
        aor=aor,
        contact=NameAddress.parse(str(record["contact"]), "Contact"),
        expires_at=float(expires_at),
        q=float(q),
        call_id=call_id,
        cseq=cseq,
        flow=_flow(record.get("flow")),
        registered_from=_address(record.get("registered_from")),
        instance=instance,
        reg_id=reg_id,
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


class BindingStore:
    """
    The registrar's bindings in the state database.

    It watches the registrar: each change of an AOR's bindings stages the
    AOR's row at once (a few tens of microseconds, spread over the
    REGISTERs), and the database's flusher commits the rows once a second.
    """

    log = Logger()

    def __init__(self, database: StateDatabase, registrar: Registrar) -> None:
        self.database = database
        self.registrar = registrar
        registrar.change_observers.append(self.stage)

    def stage(self, aor: str) -> None:
        """Stage ``aor``'s row as its bindings are now (none: the row goes)."""
        self.database.stage(SECTION, aor, encode_row(self.registrar.local_bindings(aor)))

    def restore(self, now: float, legacy_file: Path | None = None) -> None:
        """
        Give the registrar back the bindings saved before a restart, and
        move an earlier version's file (``legacy_file``) into the database.
        """
        loaded = decode_rows(self.database.load(SECTION), now)
        taken = self.registrar.restore(loaded.bindings)
        self._report(loaded, taken, str(self.database.path))
        if legacy_file is not None:
            self._migrate(legacy_file, now)

    def _migrate(self, path: Path, now: float) -> None:
        try:
            text, _signature = read_bounded_text(path, MAX_LEGACY_FILE_BYTES, "SIP bindings file")
            loaded = decode_legacy_file(text, now)
        except FileNotFoundError:
            return
        except (DataFileError, ValueError) as e:
            self.log.warn(
                "{why}; left it in place, the phones registered here must register again",
                why=f"the old SIP bindings file {path} cannot be read ({e})",
            )
            return
        taken = self.registrar.restore(loaded.bindings)
        self._report(loaded, taken, str(path))
        # The restored AORs are staged; written now, so the file can go: one store, not two.
        try:
            self.database.flush()
            path.unlink()
        except (OSError, sqlite3.Error) as e:
            self.log.warn(
                "could not move {path} into the state database: {why}", path=str(path), why=str(e)
            )

    def _report(self, loaded: LoadedBindings, taken: int, source: str) -> None:
        if taken or loaded.expired or loaded.connection_lost or loaded.malformed:
            self.log.info(
                "took back {taken} SIP binding(s) from {path}; left out {expired} expired, "
                "{lost} whose TCP or TLS connection is gone (those phones register again) "
                "and {malformed} malformed",
                taken=taken,
                path=source,
                expired=loaded.expired,
                lost=loaded.connection_lost,
                malformed=loaded.malformed,
            )
