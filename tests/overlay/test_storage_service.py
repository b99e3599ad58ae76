"""The storage service on a small in-memory ring: replication, hand-over, refusals."""

from __future__ import annotations

from attrs import evolve
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay.errors import RequestFailed
from p2psip.overlay import bodies
from p2psip.overlay.bodies import DataValue, DictionaryEntry
from p2psip.overlay.kinds import CERTIFICATE_BY_USER, DATA, SIP_REGISTRATION
from p2psip.overlay.message import Destination, ErrorCode, MessageCode
from p2psip.overlay.storage import StoreError
from p2psip.overlay.storage_service import HAND_OVER_REPLICA_NUMBER
from p2psip.util.ids import id_to_bytes, resource_id
from tests.overlay.ringsim import RingSimulation


class StorageServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sim = RingSimulation(seed=31)
        self.addCleanup(self.sim.stop_all)
        self.sim.found()
        for _ in range(3):
            self.sim.join()
        self.sim.run_until(self.sim.consistent, 60)
        self.sim.run(2 * self.sim.config.update_interval_seconds)

    def node_for(self, name: str) -> object:
        owner = self.sim.owner(resource_id(name))
        return next(node for node in self.sim.live() if node.node_id == owner)

    def test_store_is_replicated_to_the_next_successors(self) -> None:
        """A stored value is held by its owner and its first two successors, which the answer names."""
        result = self.sim.wait(self.sim.live()[0].put("replicated", b"v"))
        owner = self.node_for("replicated")
        expected = tuple(owner.topology.successors[:2])
        self.assertEqual(result.replicas, expected)
        holders = {
            node.node_id
            for node in self.sim.live()
            if node.storage.store.export(result.resource_id, self.sim.clock.seconds())
        }
        self.assertEqual(holders, {owner.node_id, *expected})

    def test_hand_over_keeps_generation_counters(self) -> None:
        """A hand-over Store is not an original: the receiver takes our generation counter."""
        sender = self.node_for("handed")
        for value in (b"one", b"two", b"three"):
            self.sim.wait(sender.put("handed", value))
        receiver = next(
            node
            for node in self.sim.live()
            if node is not sender and node.node_id not in sender.topology.successors[:2]
        )
        resource = resource_id("handed")
        handed = self.sim.wait(sender.storage.hand_over(receiver.node_id, [resource]))
        self.assertEqual((handed.refused, handed.unreachable), (0, 0))
        [kind_data] = receiver.storage.store.export(resource, self.sim.clock.seconds())
        [ours] = sender.storage.store.export(resource, self.sim.clock.seconds())
        self.assertEqual(kind_data.generation_counter, ours.generation_counter)
        self.assertEqual(kind_data.values[0].value.value, b"three")
        self.assertEqual(receiver.storage.store.replica_number(resource), HAND_OVER_REPLICA_NUMBER)

    def test_unreachable_hand_over_is_counted(self) -> None:
        """A hand-over to a peer that is gone reports every resource as unreachable."""
        sender = self.node_for("lost")
        self.sim.wait(sender.put("lost", b"v"))
        victim = next(node for node in self.sim.live() if node is not sender)
        self.sim.crash(victim)
        handed = self.sim.wait(sender.storage.hand_over(victim.node_id, [resource_id("lost")]))
        self.assertEqual((handed.refused, handed.unreachable), (0, 1))

    def test_refusal_carries_the_rfc_code(self) -> None:
        """A value larger than its Kind allows is refused with Error_Data_Too_Large."""
        far = self.sim.live()[0]
        too_big = b"x" * (DATA.max_size + 1)
        [failure] = self.sim.wait(far.put("huge", too_big).addErrback(lambda f: [f]))
        self.assertIsInstance(failure.value, RequestFailed)
        self.assertEqual(failure.value.error_code, ErrorCode.DATA_TOO_LARGE)

    def test_store_request_is_all_or_nothing(self) -> None:
        """A StoreReq whose second Kind is refused stores nothing of its first (s7.4.1.1)."""
        owner = self.node_for("atomic")
        writer = next(node for node in self.sim.live() if node is not owner)
        resource = resource_id("atomic")
        service = writer.storage
        fine = bodies.StoreKindData(
            DATA.kind_id,
            0,
            (service._stored_data(resource, DATA.kind_id, DataValue(True, b"v"), 60),),
        )
        too_big = bodies.StoreKindData(
            SIP_REGISTRATION.kind_id,
            0,
            (
                service._stored_data(
                    resource,
                    SIP_REGISTRATION.kind_id,
                    DictionaryEntry(b"k", DataValue(True, b"x" * (SIP_REGISTRATION.max_size + 1))),
                    60,
                ),
            ),
        )
        body = bodies.StoreReq(resource, 0, (fine, too_big)).encode()
        request = writer.messenger.request(
            Destination.resource(resource), MessageCode.STORE_REQ, body
        )
        [failure] = self.sim.wait(request.addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.DATA_TOO_LARGE)
        self.assertEqual(owner.storage.store.export(resource, self.sim.clock.seconds()), ())

    def test_lost_replica_holder_is_refilled(self) -> None:
        """When a replica holder is gone, the next round copies the value to the new successor."""
        result = self.sim.wait(self.sim.live()[0].put("refill", b"v"))
        owner = self.node_for("refill")
        holder = next(node for node in self.sim.live() if node.node_id == result.replicas[0])
        self.sim.crash(holder)
        self.sim.run_until(self.sim.consistent, 120)
        self.sim.run(2 * self.sim.config.update_interval_seconds)
        now = self.sim.clock.seconds()
        holders = {
            n.node_id for n in self.sim.live() if n.storage.store.export(result.resource_id, now)
        }
        self.assertEqual(holders, {owner.node_id, *owner.topology.successors[:2]})

    def test_replica_bookkeeping_goes_with_the_value(self) -> None:
        """Once a value has expired, its owner forgets who held its replicas."""
        result = self.sim.wait(self.sim.live()[0].put("short-lived", b"v", lifetime=5))
        owner = self.node_for("short-lived")
        self.assertIn(result.resource_id, owner.storage.replica_holders)
        self.sim.run(2 * self.sim.config.update_interval_seconds)
        self.assertNotIn(result.resource_id, owner.storage.replica_holders)

    def test_fetch_answer_carries_the_writers_certificate(self) -> None:
        """A Fetch answer carries the certificate of each value's signer, so the asker can verify it."""
        owner = self.node_for("signed-by-writer")
        writer = next(node for node in self.sim.live() if node is not owner)
        self.sim.wait(writer.put("signed-by-writer", b"v"))
        asker = next(node for node in self.sim.live() if node not in (writer, owner))
        sent: list[bytes] = []
        original = owner.messenger.reply

        def spy(link: object, request: object, reply: object) -> None:
            if reply.code == MessageCode.FETCH_ANS:  # type: ignore[attr-defined]
                sent.append(reply.certificates)  # type: ignore[attr-defined]
            original(link, request, reply)  # type: ignore[arg-type]

        owner.messenger.reply = spy  # type: ignore[method-assign]
        got = self.sim.wait(asker.get("signed-by-writer"))
        self.assertEqual(got.value, b"v")
        self.assertEqual(sent, [(writer.identity.certificate_der,)])

    def test_two_stores_in_one_millisecond(self) -> None:
        """Storage times grow per store, so a second put at the same instant replaces the first."""
        writer = self.sim.live()[0]
        self.sim.wait(writer.put("twice", b"one"))
        self.sim.wait(writer.put("twice", b"two"))
        self.assertEqual(self.sim.wait(self.sim.live()[1].get("twice")).value, b"two")

    def test_second_writer_is_refused(self) -> None:
        """A DATA name belongs to its first writer while the value lives: Error_Forbidden."""
        first, second = self.sim.live()[:2]
        self.sim.wait(first.put("owned", b"mine"))
        [failure] = self.sim.wait(second.put("owned", b"theirs").addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
        self.assertEqual(self.sim.wait(second.get("owned")).value, b"mine")

    def test_tombstone_outlives_every_older_value(self) -> None:
        """A removed entry's tombstone lives as long as the Kind lets any value live."""
        writer = self.sim.live()[0]
        user = "carol@example.org"
        credential = writer.user_credential(user)
        key = id_to_bytes(writer.node_id)
        kind = SIP_REGISTRATION.kind_id
        self.sim.wait(writer.put_dictionary_entry(user, kind, key, b"v", 60, signer=credential))
        self.sim.wait(writer.remove_dictionary_entry(user, kind, key, signer=credential))
        owner = self.node_for(user)
        exported = owner.storage.store.export(resource_id(user), self.sim.clock.seconds())
        [kind_data] = [data for data in exported if data.kind == kind]
        [tombstone] = kind_data.values
        self.assertFalse(tombstone.value.value.exists)
        self.assertEqual(tombstone.lifetime, SIP_REGISTRATION.max_lifetime_seconds)

    def stores_sent(self, node: object) -> list[tuple[int, ...]]:
        """The Kinds of every original StoreReq ``node`` sends from now on."""
        sent: list[tuple[int, ...]] = []
        original = node.messenger.request  # type: ignore[attr-defined]

        def spy(destination: object, code: object, body: bytes, **options: object) -> object:
            if code == MessageCode.STORE_REQ:
                request = bodies.StoreReq.decode(body, data_models=node.messenger.data_models)  # type: ignore[attr-defined]
                if request.replica_number == 0:
                    sent.append(tuple(data.kind for data in request.kind_data))
            return original(destination, code, body, **options)

        node.messenger.request = spy  # type: ignore[attr-defined]
        return sent

    def test_first_registration_carries_the_users_certificate(self) -> None:
        """
        A user's first registration and its certificate travel in one
        StoreReq (one resource, two Kinds), held with its replicas; the
        next round does not store the certificate again.
        """
        user = "erin@example.org"
        owner = self.node_for(user)
        writer = next(node for node in self.sim.live() if node is not owner)
        sent = self.stores_sent(writer)
        credential = writer.user_credential(user)
        kind = SIP_REGISTRATION.kind_id
        key = id_to_bytes(writer.node_id)
        entry = DictionaryEntry(key, DataValue(True, b"v"))
        result = self.sim.wait(
            writer.storage.store_values(resource_id(user), kind, [entry], 600, credential)
        )
        self.sim.wait(writer.put_dictionary_entry(user, kind, key, b"w", 600, signer=credential))
        self.sim.run(2 * self.sim.config.update_interval_seconds)
        self.assertEqual(sent, [(kind, CERTIFICATE_BY_USER.kind_id), (kind,)])
        now = self.sim.clock.seconds()
        for holder in self.sim.live():
            if holder.node_id not in (owner.node_id, *owner.topology.successors[:2]):
                continue
            exported = holder.storage.store.export(resource_id(user), now)
            [certificate] = [d for d in exported if d.kind == CERTIFICATE_BY_USER.kind_id]
            self.assertEqual(certificate.values[0].value.value.value, credential.certificate_der)
        # The answer lists each replica once, not once per Kind.
        self.assertEqual(result.replicas, tuple(owner.topology.successors[:2]))

    def test_refused_certificate_does_not_cost_the_registration(self) -> None:
        """If the holder refuses the StoreReq with the certificate, the registration is stored alone."""
        user = "frank@example.org"
        owner = self.node_for(user)
        writer = next(node for node in self.sim.live() if node is not owner)
        original = owner.storage.store.store_request

        def no_certificates(
            resource: int, kind_data: object, *args: object, **kw: object
        ) -> object:
            if any(d.kind == CERTIFICATE_BY_USER.kind_id for d in kind_data):  # type: ignore[attr-defined]
                raise StoreError(ErrorCode.FORBIDDEN, "no certificates today")
            return original(resource, kind_data, *args, **kw)  # type: ignore[arg-type]

        owner.storage.store.store_request = no_certificates
        sent = self.stores_sent(writer)
        credential = writer.user_credential(user)
        kind = SIP_REGISTRATION.kind_id
        key = id_to_bytes(writer.node_id)
        with capturedLogs():
            self.sim.wait(
                writer.put_dictionary_entry(user, kind, key, b"v", 600, signer=credential)
            )
        self.assertEqual(sent, [(kind, CERTIFICATE_BY_USER.kind_id), (kind,)])
        exported = owner.storage.store.export(resource_id(user), self.sim.clock.seconds())
        self.assertEqual([d.kind for d in exported], [kind])
        # Not marked stored: the next round publishes the certificate by itself.
        owner.storage.store.store_request = original
        self.sim.run(2 * self.sim.config.update_interval_seconds)
        self.assertIn((CERTIFICATE_BY_USER.kind_id,), sent)

    def test_lying_responder_cannot_spoil_a_fetch(self) -> None:
        """A value with a bad signature in a Fetch answer is dropped (and logged); the rest remain."""
        user = "dave@example.org"
        owner = self.node_for(user)
        writers = [node for node in self.sim.live() if node is not owner][:2]
        kind = SIP_REGISTRATION.kind_id
        for writer in writers:
            credential = writer.user_credential(user)
            key = id_to_bytes(writer.node_id)
            self.sim.wait(
                writer.put_dictionary_entry(user, kind, key, b"v", 600, signer=credential)
            )
        original = owner.storage.store.fetch

        def tampered(*args: object) -> object:
            responses = original(*args)  # type: ignore[arg-type]
            [response] = responses
            first, second = response.values
            forged = evolve(first, value=evolve(first.value, value=DataValue(True, b"forged")))
            return (evolve(response, values=(forged, second)),)

        self.patch(owner.storage.store, "fetch", tampered)
        asker = next(node for node in self.sim.live() if node not in (owner, *writers))
        with capturedLogs() as events:
            entries = self.sim.wait(asker.get_dictionary(user, kind))
        self.assertEqual(list(entries.values()), [b"v"])
        [warning] = [e for e in events if e["log_level"].name == "warn"]
        self.assertIn("bad signature", warning["why"])

    def test_replica_of_another_nodes_range_is_refused(self) -> None:
        """A replica Store for a resource outside its sender's range is refused with Error_Forbidden."""
        owner = self.node_for("not-yours")
        self.sim.wait(owner.put("not-yours", b"v"))
        resource = resource_id("not-yours")
        sender = next(node for node in self.sim.live() if node is not owner)
        receiver = next(node for node in self.sim.live() if node not in (owner, sender))
        kind_data = owner.storage.store.export(resource, self.sim.clock.seconds())
        body = bodies.StoreReq(resource, 1, tuple(kind_data)).encode()
        request = sender.messenger.request(
            Destination.node(receiver.node_id), MessageCode.STORE_REQ, body
        )
        [failure] = self.sim.wait(request.addErrback(lambda f: [f]))
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
        self.assertIn("not in the range", failure.getErrorMessage())
        self.assertEqual(receiver.counters["replicas_refused"], 1)
