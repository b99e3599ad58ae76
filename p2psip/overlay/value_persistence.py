"""
The DHT values a peer holds, kept across its restarts in the state
database (section ``dht-values`` of ``DATA_DIR/state.sqlite3``,
:mod:`p2psip.util.state_db`).

RFC 6940 keeps values alive through replicas: when a peer dies its
successors hold copies.  That is not enough when several peers of a small
ring die together (a power cut, a host that ran three of them), or when the
peer that comes back is the last one holding a value.  So each resource the
peer holds is saved as it stands: one row per Resource-ID, whose value is
what a hand-over would send (the signed ``StoredData`` exactly as their
signers made them, the generation counters, our replica number) plus the
signers' certificates and the time it was saved.

Saving follows the store's change counter (``DataStore.version``): every
flush round stages the resources that changed and removes the rows of the
ones that went; it runs only while the node is in the ring, so a leave (which
hands everything to others and then forgets it) keeps the last picture.

At start, before the node joins, every row is put back through the
store's own rules: signatures and access policies checked against the
saved certificates (which the trust policy must still accept), lifetimes
shortened by the time the node was down, expired values dropped.  A value
that no longer passes is left out and counted.  Once in the ring the node's
usual maintenance takes over: what it is responsible for is replicated to
its successors, and the ring's newer copies win over older ones by storage
time when ranges are handed over.

Row layout: ``saved_at`` (float64, POSIX seconds), a count of certificates
(uint8), each as a uint32 length and DER, then the encoded ``StoreReq``.
"""

from __future__ import annotations

import struct
from typing import Any

from attrs import evolve
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from p2psip.overlay import bodies
from p2psip.overlay.codec import DecodeError, Limits
from p2psip.overlay.identity import CertificateCache, SignatureError
from p2psip.overlay.membership import Membership
from p2psip.overlay.storage import DataStore, StoreError
from p2psip.overlay.storage_service import HAND_OVER_REPLICA_NUMBER, StorageService
from p2psip.util.ids import id_hex
from p2psip.util.logs import Logger
from p2psip.util.state_db import StateDatabase

SECTION = "dht-values"
_HEADER = struct.Struct(">dB")
_LENGTH = struct.Struct(">I")
#: A row's resources are saved with at most this many signer certificates.
MAX_CERTIFICATES = 255


def encode_row(saved_at: float, certificates: tuple[bytes, ...], request: bodies.StoreReq) -> bytes:
    """One resource's row (see the module docstring)."""
    certificates = certificates[:MAX_CERTIFICATES]
    parts = [_HEADER.pack(saved_at, len(certificates))]
    for der in certificates:
        parts += [_LENGTH.pack(len(der)), der]
    parts.append(request.encode())
    return b"".join(parts)


def decode_row(
    row: bytes, limits: Limits, data_models: Any
) -> tuple[float, tuple[bytes, ...], bodies.StoreReq]:
    """
    The saved time, certificates and StoreReq of a row.

    :raises DecodeError: the row is damaged.
    """
    if len(row) < _HEADER.size:
        raise DecodeError("row shorter than its header")
    saved_at, count = _HEADER.unpack_from(row)
    offset = _HEADER.size
    certificates = []
    for _ in range(count):
        if len(row) < offset + _LENGTH.size:
            raise DecodeError("certificate length cut short")
        (length,) = _LENGTH.unpack_from(row, offset)
        offset += _LENGTH.size
        if len(row) < offset + length:
            raise DecodeError("certificate cut short")
        certificates.append(row[offset : offset + length])
        offset += length
    return saved_at, tuple(certificates), bodies.StoreReq.decode(row[offset:], limits, data_models)


class ValuePersistence(Service):
    """
    Saves what ``storage`` holds into ``database`` and puts it back at start.

    It is a child of the role placed before the overlay service, so the
    values are back in the store before the node joins; :meth:`stage_changes`
    is a source of the database's flusher.
    """

    log = Logger()

    def __init__(
        self,
        database: StateDatabase,
        storage: StorageService,
        membership: Membership,
        certificates: CertificateCache,
        clock: IReactorTime,
        limits: Limits,
    ) -> None:
        self.database = database
        self.storage = storage
        self.store: DataStore = storage.store
        self.membership = membership
        self.certificates = certificates
        self.clock = clock
        self.limits = limits
        #: Resource-ID -> the store's version when its row was last staged.
        self._saved: dict[int, int] = {}
        self.restored = 0
        self.left_out = 0

    def startService(self) -> None:
        super().startService()
        self.restore()

    def restore(self) -> None:
        """Put the saved values back into the store (once, before the node joins)."""
        now = self.clock.seconds()
        restored = left_out = 0
        for key, row in self.database.load(SECTION).items():
            try:
                resource = int(key, 16)
                saved_at, certificates, request = decode_row(
                    row, self.limits, self.storage.data_models
                )
            except (ValueError, DecodeError):
                left_out += 1
                continue
            kind_data = _aged(request.kind_data, max(0.0, now - saved_at))
            if not kind_data:
                self.database.stage(SECTION, key, None)
                continue
            for der in certificates:
                try:
                    self.certificates.add(der)
                except SignatureError:
                    pass  # the value it signed fails below and is counted
            try:
                # As a hand-over: the saved generation counters are taken.
                self.store.store_request(
                    resource, kind_data, now, replica_number=HAND_OVER_REPLICA_NUMBER
                )
            except StoreError as error:
                left_out += 1
                self.log.debug(
                    "left out the saved values of {resource}: {why}",
                    resource=id_hex(resource)[:8],
                    why=str(error),
                )
                continue
            self.store.set_replica_number(resource, request.replica_number)
            self._saved[resource] = self.store.version(resource)
            restored += 1
        self.restored, self.left_out = restored, left_out
        if restored or left_out:
            self.log.info(
                "took back the DHT values of {restored} resource(s) from {path}; left out "
                "{left_out} that were damaged or no longer pass their signature and access checks",
                restored=restored,
                left_out=left_out,
                path=str(self.database.path),
            )

    def stage_changes(self) -> None:
        """Stage the rows of resources that changed or went since the last round."""
        if not self.running or not self.membership.in_ring():
            return
        now = self.clock.seconds()
        held = set()
        for resource in self.store.resources():
            held.add(resource)
            version = self.store.version(resource)
            if self._saved.get(resource) == version:
                continue
            self._saved[resource] = version
            self.database.stage(SECTION, id_hex(resource), self._row(resource, now))
        for resource in [r for r in self._saved if r not in held]:
            del self._saved[resource]
            self.database.stage(SECTION, id_hex(resource), None)

    def _row(self, resource: int, now: float) -> bytes | None:
        kind_data = self.store.export(resource, now)
        if not kind_data:
            return None
        replica_number = self.store.replica_number(resource) or 0
        request = bodies.StoreReq(resource, replica_number, kind_data)
        certificates = self.storage.signer_certificates(v for kd in kind_data for v in kd.values)
        return encode_row(now, certificates, request)


def _aged(
    kind_data: tuple[bodies.StoreKindData, ...], elapsed_seconds: float
) -> tuple[bodies.StoreKindData, ...]:
    """The values with ``elapsed_seconds`` less to live; the ones that expired are gone."""
    elapsed = int(elapsed_seconds) + 1  # never longer than they had
    aged = []
    for data in kind_data:
        values = tuple(
            evolve(value, lifetime=value.lifetime - elapsed)
            for value in data.values
            if value.lifetime > elapsed
        )
        if values:
            aged.append(evolve(data, values=values))
    return tuple(aged)
