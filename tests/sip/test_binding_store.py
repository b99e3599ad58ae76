"""The registrar's bindings kept across a super-node's restart (p2psip.sip.binding_store)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.binding_store import (
    SavedBindings,
    decode_bindings,
    encode_bindings,
    load_bindings,
    save_bindings,
)
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import NameAddress
from p2psip.sip.registrar import LocalBinding, Registrar
from p2psip.sip.transaction import Hop
from p2psip.util.files import DataFileError

from .memory_storage import MemoryOverlayStorage

AOR = "sip:alice@example.org"
NOW = 1_764_000_000.0


def binding(
    contact: str = "<sip:alice@192.0.2.7:5062>",
    flow: object = Hop("UDP", "192.0.2.7", 5062),
    sent_by: tuple[str, int] | None = ("192.0.2.7", 5062),
    expires_in: float = 600,
    aor: str = AOR,
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
    )


def fields(bindings: list[LocalBinding]) -> list[tuple[object, ...]]:
    """What a binding is (NameAddress compares by identity)."""
    return [
        (b.aor, str(b.contact), b.expires_at, b.q, b.call_id, b.cseq, b.flow, b.registered_from)
        for b in bindings
    ]


class BindingFileTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """What is saved comes back equal: contact, expiry, q, Call-ID, CSeq, flow and sent-by."""
        kept = [
            binding(),
            # Behind a NAT: reached over the UDP flow, which is an address.
            binding(
                "<sip:bob@10.0.0.5:5062>", Hop("UDP", "203.0.113.9", 40000), ("10.0.0.5", 5062)
            ),
        ]
        loaded = decode_bindings(encode_bindings(kept).decode(), NOW)
        self.assertEqual(fields(loaded.bindings), fields(kept))
        self.assertEqual((loaded.expired, loaded.connection_lost, loaded.malformed), (0, 0, 0))

    def test_expired_and_connection_bound_are_left_out(self) -> None:
        """An expired binding, and one reached over a TCP connection that is gone, do not come back."""
        tcp = binding("<sip:alice@192.0.2.7:5062;transport=tcp>", Hop("TCP", "192.0.2.7", 40000))
        # A TCP binding whose contact is reached directly needs no connection.
        direct = binding("<sip:carol@198.51.100.4:5060;transport=tcp>", Hop("TCP", "192.0.2.7", 1))
        loaded = decode_bindings(
            encode_bindings([binding(expires_in=-1), tcp, direct]).decode(), NOW
        )
        self.assertEqual(fields(loaded.bindings), fields([direct]))
        self.assertEqual((loaded.expired, loaded.connection_lost), (1, 1))

    def test_malformed_records_are_skipped(self) -> None:
        """A damaged record is counted and skipped; the others still come back."""
        good = json.loads(encode_bindings([binding()]))["bindings"][0]
        bad = [
            "x",
            {**good, "q": 7},
            {**good, "expires_at": "soon"},
            {**good, "contact": "<<<"},
            {**good, "flow": ["SCTP", "192.0.2.7", 5062]},
            {**good, "flow": ["UDP", "192.0.2.7", 70000]},
            {**good, "cseq": True},
            {key: value for key, value in good.items() if key != "aor"},
        ]
        text = json.dumps({"version": 1, "bindings": [*bad, good]})
        loaded = decode_bindings(text, NOW)
        self.assertEqual((len(loaded.bindings), loaded.malformed), (1, len(bad)))

    def test_saved_per_aor(self) -> None:
        """SavedBindings writes only when an AOR changed, and drops an AOR left with no binding."""
        path = Path(self.mktemp())
        saved = SavedBindings(path)
        saved.save()
        self.assertFalse(path.exists())
        bob = binding(aor="sip:bob@example.org")
        saved.update(AOR, [binding()])
        saved.update(bob.aor, [bob])
        saved.save()
        self.assertEqual(fields(load_bindings(path, NOW).bindings), fields([binding(), bob]))
        path.unlink()
        saved.save()
        self.assertFalse(path.exists(), "written again with nothing changed")
        saved.update(AOR, [])
        saved.save()
        self.assertEqual(fields(load_bindings(path, NOW).bindings), fields([bob]))

    def test_files(self) -> None:
        """The file is mode 0600; no file is no bindings; a file of another format is an error naming it."""
        path = Path(self.mktemp())
        self.assertEqual(load_bindings(path, NOW).bindings, [])
        save_bindings(path, [binding()])
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(fields(load_bindings(path, NOW).bindings), fields([binding()]))
        for text in ("{", "[]", '{"version": 2, "bindings": []}', '{"version": 1}'):
            path.write_text(text)
            error = self.assertRaises(DataFileError, load_bindings, path, NOW)
            self.assertIn(str(path), str(error))


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
        """Restored bindings are served, counted as a change, and expire on time."""
        self.assertEqual(self.registrar.restore([binding(expires_in=60)]), 1)
        self.assertEqual(self.registrar.take_changed(), {AOR})
        self.assertEqual(self.registrar.take_changed(), set())
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
