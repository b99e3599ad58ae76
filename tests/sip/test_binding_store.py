"""The registrar's bindings kept across a super-node's restart (p2psip.sip.binding_store)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.binding_store import BindingStore, decode_legacy_file, decode_rows, encode_row
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import NameAddress
from p2psip.sip.registrar import LocalBinding, Registrar
from p2psip.sip.transaction import Hop
from p2psip.util.state_db import StateDatabase

from .memory_storage import MemoryOverlayStorage

AOR = "sip:alice@example.org"
NOW = 1_764_000_000.0


def binding(
    contact: str = "<sip:alice@192.0.2.7:5062>",
    flow: object = Hop("UDP", "192.0.2.7", 5062),
    sent_by: tuple[str, int] | None = ("192.0.2.7", 5062),
    expires_in: float = 600,
    aor: str = AOR,
    instance: str | None = None,
    reg_id: int | None = None,
) -> LocalBinding:
    return LocalBinding(
        aor=aor,
        contact=NameAddress.parse(contact),
        expires_at=NOW + expires_in,
        q=0.5,
        call_id="call-1@192.0.2.7",
        cseq=7,
        flow=flow,
        registered_from=sent_by,
        instance=instance,
        reg_id=reg_id,
    )


def fields(bindings: list[LocalBinding]) -> list[tuple[object, ...]]:
    """What a binding is (NameAddress compares by identity)."""
    return [
        (
            b.aor,
            str(b.contact),
            b.expires_at,
            b.q,
            b.call_id,
            b.cseq,
            b.flow,
            b.registered_from,
            b.instance,
            b.reg_id,
        )
        for b in bindings
    ]


def rows(*bindings: LocalBinding) -> dict[str, bytes]:
    """The database rows for ``bindings``, one per AOR."""
    by_aor: dict[str, list[LocalBinding]] = {}
    for each in bindings:
        by_aor.setdefault(each.aor, []).append(each)
    encoded = {aor: encode_row(listed) for aor, listed in by_aor.items()}
    return {aor: row for aor, row in encoded.items() if row is not None}


class BindingRowTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """What is saved comes back equal: contact, expiry, q, Call-ID, CSeq, flow, sent-by, instance."""
        kept = [
            binding(),
            # Behind a NAT: reached over the UDP flow, which is an address.
            binding(
                "<sip:bob@10.0.0.5:5062>", Hop("UDP", "203.0.113.9", 40000), ("10.0.0.5", 5062)
            ),
            binding(aor="sip:carol@example.org", instance="urn:uuid:00-11", reg_id=2),
        ]
        loaded = decode_rows(rows(*kept), NOW)
        self.assertEqual(fields(loaded.bindings), fields(kept))
        self.assertEqual((loaded.expired, loaded.connection_lost, loaded.malformed), (0, 0, 0))
        self.assertIsNone(encode_row([]))

    def test_expired_and_connection_bound_are_left_out(self) -> None:
        """An expired binding, and one reached over a TCP connection that is gone, do not come back."""
        tcp = binding("<sip:alice@192.0.2.7:5062;transport=tcp>", Hop("TCP", "192.0.2.7", 40000))
        # A TCP binding whose contact is reached directly needs no connection.
        direct = binding("<sip:carol@198.51.100.4:5060;transport=tcp>", Hop("TCP", "192.0.2.7", 1))
        loaded = decode_rows(rows(binding(expires_in=-1), tcp, direct), NOW)
        self.assertEqual(fields(loaded.bindings), fields([direct]))
        self.assertEqual((loaded.expired, loaded.connection_lost), (1, 1))

    def test_malformed_records_are_skipped(self) -> None:
        """A damaged record or row is counted and skipped; the others still come back."""
        good = json.loads(rows(binding())[AOR])[0]
        bad = [
            "x",
            {**good, "q": 7},
            {**good, "expires_at": "soon"},
            {**good, "contact": "<<<"},
            {**good, "flow": ["SCTP", "192.0.2.7", 5062]},
            {**good, "flow": ["UDP", "192.0.2.7", 70000]},
            {**good, "cseq": True},
            {**good, "reg_id": "one"},
            {key: value for key, value in good.items() if key != "aor"},
        ]
        damaged = {"a": json.dumps([*bad, good]).encode(), "b": b"\xff{", "c": b'{"x": 1}'}
        loaded = decode_rows(damaged, NOW)
        self.assertEqual((len(loaded.bindings), loaded.malformed), (1, len(bad) + 2))

    def test_legacy_file(self) -> None:
        """An earlier version's JSON file is still understood; another format is refused."""
        good = json.loads(rows(binding())[AOR])[0]
        text = json.dumps({"version": 1, "bindings": [good]})
        self.assertEqual(fields(decode_legacy_file(text, NOW).bindings), fields([binding()]))
        for text in ("{", "[]", '{"version": 2, "bindings": []}', '{"version": 1}'):
            self.assertRaises(ValueError, decode_legacy_file, text, NOW)


class BindingStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = Path(self.mktemp())
        self.path.mkdir()
        self.database = StateDatabase.open(self.path / "state.sqlite3")
        self.addCleanup(self.database.close)

    def registrar(self) -> Registrar:
        registrar = Registrar(
            "example.org",
            OverlayLocationService(MemoryOverlayStorage(1, self.clock), self.clock),
            self.clock,
            trusted_network=True,
        )
        self.addCleanup(registrar.stop)
        return registrar

    def test_changes_are_staged_and_restored(self) -> None:
        """Each change stages its AOR's row, expiry removes it, and a new registrar gets them back."""
        registrar = self.registrar()
        BindingStore(self.database, registrar)
        bob = binding(aor="sip:bob@example.org")
        registrar.restore([binding(expires_in=60), bob])
        self.assertEqual(self.database.staged, 2)
        self.database.flush()
        self.clock.advance(61)  # alice's binding expires
        self.assertEqual(self.database.staged, 1)
        self.database.flush()
        again = self.registrar()
        BindingStore(self.database, again).restore(NOW)
        self.assertEqual(fields(again.all_bindings()), fields([bob]))

    def test_legacy_file_moves_into_the_database(self) -> None:
        """The old sip-bindings.json is read once, written into the database and removed."""
        legacy = self.path / "sip-bindings.json"
        good = json.loads(rows(binding())[AOR])[0]
        legacy.write_text(json.dumps({"version": 1, "bindings": [good]}))
        registrar = self.registrar()
        BindingStore(self.database, registrar).restore(NOW, legacy)
        self.assertFalse(legacy.exists())
        self.assertEqual(fields(registrar.all_bindings()), fields([binding()]))
        again = self.registrar()
        BindingStore(self.database, again).restore(NOW, legacy)
        self.assertEqual(fields(again.all_bindings()), fields([binding()]))

    def test_damaged_legacy_file_is_left_alone(self) -> None:
        """A legacy file that cannot be read is left in place with a warning naming it."""
        legacy = self.path / "sip-bindings.json"
        legacy.write_text("{")
        registrar = self.registrar()
        with capturedLogs() as events:
            BindingStore(self.database, registrar).restore(NOW, legacy)
        self.assertTrue(legacy.exists())
        self.assertIn(str(legacy), " ".join(formatEvent(e) for e in events))


class RegistrarRestoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        storage = MemoryOverlayStorage(1, self.clock)
        self.registrar = Registrar(
            "example.org",
            OverlayLocationService(storage, self.clock),
            self.clock,
            trusted_network=True,
        )
        self.addCleanup(self.registrar.stop)

    def test_restore_serves_and_expires(self) -> None:
        """Restored bindings are served, reported as a change, and expire on time."""
        changed: list[str] = []
        self.registrar.change_observers.append(changed.append)
        self.assertEqual(self.registrar.restore([binding(expires_in=60)]), 1)
        self.assertEqual(changed, [AOR])
        self.assertEqual(
            fields(self.registrar.local_bindings(AOR)), fields([binding(expires_in=60)])
        )
        self.assertEqual(fields(self.registrar.all_bindings()), fields([binding(expires_in=60)]))
        self.clock.advance(61)
        self.assertEqual(self.registrar.served_aors(), [])

    def test_restore_never_overrides_a_new_registration(self) -> None:
        """An AOR registered again since the restart keeps its new bindings."""
        self.registrar.restore([binding("<sip:alice@192.0.2.9:5062>")])
        self.registrar.restore([binding(), binding(aor="sip:bob@example.org")])
        self.assertEqual(
            [str(b.contact.uri) for b in self.registrar.local_bindings(AOR)],
            ["sip:alice@192.0.2.9:5062"],
        )
        self.assertEqual(self.registrar.served_aors(), [AOR, "sip:bob@example.org"])
