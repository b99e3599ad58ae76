"""
The node's storage service: Store, Fetch and Stat, replication and hand-over.

The rules of what may be stored live in the sans-IO
:class:`~p2psip.overlay.storage.DataStore`; this module puts it on the
ring:

* **Answering.** Store, Fetch and Stat requests delivered to us (we own
  the Resource-ID, or a replica/hand-over Store is addressed to us) are
  applied to the store; refusals become RELOAD Errors with the RFC code.
* **Replication** (CHORD-RELOAD, RFC 6940 s10.4).  The responsible peer
  copies every original Store to its first ``replicas`` successors before
  answering (the answer lists them), and whenever its successor list
  changes (or a stabilisation round finds a holder missing) it copies
  every value it is responsible for to successors that lack it.
* **Hand-over.**  Whole resources go to a peer that takes them over: a
  newcomer's range at join, our range at leave.  Hand-over Stores carry
  a non-zero replica_number, as replicas do: the receiver adopts our
  generation counters instead of checking them (they are ours, not the
  writer's) and merges rather than refusing where it holds newer values.
* **Who may send replicas.**  Because a replica Store skips the writer's
  generation check, only the nodes that hold a range may send one: one
  of our predecessors, for a resource in its range as far as our tables
  tell (CHORD-RELOAD replicates to the responsible node's successors), or
  the peer handing its range over to us as we join, for a resource of our
  new range.  Anyone else gets Error_Forbidden.
* **Operations.** Signed stores and verified fetches for the admin API,
  the demo and the SIP layer (:class:`~p2psip.interfaces.IOverlayStorage`).
  A store is signed by the node's identity or by one of its user
  credentials (:mod:`~p2psip.overlay.user_credentials`), the request as
  well as the values, since the Kind's policy judges both.  Fetched values
  are checked as the responsible peer checked them (signature and access
  policy); a value that fails is dropped and logged, so a lying peer cannot
  make a whole lookup fail.
* **Certificates in the overlay** (RFC 6940 s8).  Once in a ring the node
  stores its own certificate as CERTIFICATE_BY_NODE and each user
  credential's as CERTIFICATE_BY_USER, again every half lifetime.  A
  fetched value whose signer's certificate we have never seen is checked
  after fetching the certificates kept at the same Resource-ID (the user's
  for USER-* Kinds, the node's for NODE-MATCH).
* **Refusals** carry the RFC error code back to the writer and are logged
  at warn level, at most once a minute per signer (:class:`LogThrottle`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.overlay import bodies
from p2psip.overlay.certificates import CertifiedIdentity
from p2psip.overlay.errors import OverlayError, RequestFailed
from p2psip.overlay.identity import CertificateCache, NodeIdentity, SignatureError
from p2psip.overlay.kinds import (
    CERTIFICATE_BY_NODE,
    CERTIFICATE_BY_USER,
    CERTIFICATE_KINDS,
    DATA,
    AccessDenied,
    Kind,
    certificate_kind_for,
    check_access,
    node_match_resource,
    user_match_resource,
)
from p2psip.overlay.links import Link
from p2psip.overlay.membership import Membership
from p2psip.overlay.message import Destination, ErrorCode, Message, MessageCode
from p2psip.overlay.messaging import Answer, Messenger, Reply, RequestRefused
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.results import HandOver, OperationResult
from p2psip.overlay.storage import DataStore, StoreError
from p2psip.overlay.topology import ChordTopology
from p2psip.overlay.user_credentials import UserCredentials
from p2psip.util.ids import between, id_short, resource_id
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger

#: The replica_number of hand-over Stores (a newcomer's range at join, ours
#: at leave): non-zero, like a replica, so the receiver adopts the
#: sender's generation counters and merges (RFC 6940 s7.4.1.1 checks the
#: counter only for original stores).
HAND_OVER_REPLICA_NUMBER = 1

#: Hand-over Stores in flight at once to one peer.
HAND_OVER_WINDOW = 16

#: A published certificate is stored again once this share of its lifetime is gone.
CERTIFICATE_REPUBLISH_FRACTION = 0.5


class StorageService:
    """Store/Fetch/Stat on the ring, replication to successors, and hand-over."""

    log = Logger()

    def __init__(
        self,
        *,
        messenger: Messenger,
        store: DataStore,
        topology: ChordTopology,
        membership: Membership,
        identity: NodeIdentity,
        certificates: CertificateCache,
        clock: IReactorTime,
        config: OverlayConfig,
        credentials: UserCredentials | None = None,
        holds_data: bool = True,
    ) -> None:
        self.messenger = messenger
        self.store = store
        self.topology = topology
        self.membership = membership
        self.identity = identity
        self.node_id = identity.node_id
        self.certificates = certificates
        self.clock = clock
        self.config = config
        self.data_models = messenger.data_models
        self.credentials = credentials or UserCredentials(identity, certificates)
        #: Resource-ID -> the successors we know hold our replica of it.
        self.replica_holders: dict[int, set[int]] = {}
        #: The peer handing its range over to us while we join (the admitting peer), if any.
        self.hand_over_source: Callable[[], int | None] = lambda: None
        #: (Kind-ID, Resource-ID, certificate hash) -> when we last stored it.
        self._published: dict[tuple[int, int, bytes], float] = {}
        self._last_storage_time = 0
        self._refusal_log = LogThrottle(clock)
        if holds_data:
            messenger.handle(MessageCode.STORE_REQ, self._on_store)
            messenger.handle(MessageCode.FETCH_REQ, self._on_fetch)
            messenger.handle(MessageCode.STAT_REQ, self._on_stat)
        else:
            # A client (RFC 6940 s3.2.1) stores nothing for others.
            for code in (MessageCode.STORE_REQ, MessageCode.FETCH_REQ, MessageCode.STAT_REQ):
                messenger.handle(code, self._refuse_as_client)

    def _refuse_as_client(self, link: Link, message: Message, signer: int) -> Reply:
        raise RequestRefused(ErrorCode.FORBIDDEN, "a client stores no data for others")

    def _responsible_here(self, resource: int) -> bool:
        return self.membership.in_ring() and self.topology.is_responsible(resource)

    # -- answering ---------------------------------------------------------

    def _on_store(self, link: Link, message: Message, signer: int) -> Reply | Deferred[Reply]:
        request = bodies.StoreReq.decode(message.body, self.config.limits, self.data_models)
        if request.replica_number > 0:
            refusal = self._replica_refusal(signer, request.resource)
            if refusal is not None:
                self.messenger.refuse(
                    "replicas_refused",
                    link,
                    "refused a replica of {resource} from {signer}: {why}",
                    resource=id_short(request.resource),
                    signer=id_short(signer),
                    why=refusal,
                )
                raise RequestRefused(ErrorCode.FORBIDDEN, refusal)
        try:
            # One StoreReq is stored whole or not at all (RFC 6940 s7.4.1.1),
            # and an original store is also checked against what the
            # certificate that signed the request proves.
            stored = self.store.store_request(
                request.resource,
                request.kind_data,
                self.clock.seconds(),
                replica_number=request.replica_number,
                request_signer=self.certificates.identity_for(message.security.signature.identity),
            )
        except StoreError as error:
            self._refused(signer, request, error)
            raise RequestRefused(error.error_code, error.reason) from error
        responses = [(response.kind, response.generation_counter) for response in stored]

        def answer(replicas: Iterable[int]) -> Reply:
            kinds = tuple(
                bodies.StoreKindResponse(kind, generation, tuple(replicas))
                for kind, generation in responses
            )
            return Reply(MessageCode.STORE_ANS, bodies.StoreAns(kinds).encode())

        if request.replica_number == 0 and self.topology.is_responsible(request.resource):
            return self.replicate(request.resource, request.kind_data, message.body).addCallback(
                answer
            )
        return answer(())

    def _replica_refusal(self, sender: int, resource: int) -> str | None:
        """
        Why ``sender`` may not send us a replica (or hand-over) of ``resource``; None if it may.

        A predecessor may, for a resource it is responsible for as far as we
        can tell: no node we know and heard from lately lies between the
        resource and it.  (A predecessor that takes over the range of one
        that crashed replicates it at once; the crashed one's link has been
        silent for as long, and does not count, so the copy is not refused
        just because we notice the crash a moment later.)  The peer handing
        its range over to us may, for a resource of the range we take (no
        node we know, nor the sender, lies between the resource and us).
        """
        topology = self.topology
        closer = self._live_node_between(resource, sender)
        if sender in topology.predecessors and closer is None:
            return None
        if (
            sender == self.hand_over_source()
            and not between(sender, resource, self.node_id)
            and topology.may_be_responsible(resource, self.node_id)
        ):
            return None
        if sender in topology.predecessors:
            return (
                f"resource {id_short(resource)} is not in the range of {id_short(sender)} "
                f"({id_short(closer or 0)} comes first)"
            )
        return (
            "replicas are taken only from a predecessor holding the resource, or from the "
            "peer handing its range over to us"
        )

    def _live_node_between(self, resource: int, sender: int) -> int | None:
        """A node we know (ourselves, or a peer heard from within two ping intervals) strictly between."""
        topology = self.topology
        heard_since = self.clock.seconds() - 2 * self.config.ping_interval_seconds
        known = (*topology.successors, *topology.predecessors, *topology.fingers.values())
        if between(self.node_id, resource, sender):
            return self.node_id
        for peer in known:
            if peer == sender or not between(peer, resource, sender):
                continue
            link = self.messenger.links.link_for(peer)
            if link is not None and link.last_received_at >= heard_since:
                return peer
        return None

    def _refused(self, signer: int, request: bodies.StoreReq, error: StoreError) -> None:
        """Log a refused Store where an operator sees it, once a minute per signer."""
        held_back = self._refusal_log.admit(id_short(signer))
        if held_back is None:
            return
        self.log.warn(
            "refused a Store from {signer} at {resource} ({kinds}): {code} {reason}"
            " ({held_back} more from it since the last line)",
            signer=id_short(signer),
            resource=id_short(request.resource),
            kinds=", ".join(self._kind_name(data.kind) for data in request.kind_data),
            code=error.error_code.name,
            reason=error.reason,
            held_back=held_back,
        )

    def _kind_name(self, kind_id: int) -> str:
        kind = self.store.kinds.get(kind_id)
        return kind.name if kind is not None else str(kind_id)

    def _on_fetch(self, link: Link, message: Message, signer: int) -> Reply:
        request = bodies.FetchReq.decode(message.body, self.config.limits, self.data_models)
        try:
            responses = self.store.fetch(request.resource, request.specifiers, self.clock.seconds())
        except StoreError as error:
            raise RequestRefused(error.error_code, error.reason) from error
        certificates = self.signer_certificates(v for r in responses for v in r.values)
        return Reply(
            MessageCode.FETCH_ANS, bodies.FetchAns(tuple(responses)).encode(), certificates
        )

    def _on_stat(self, link: Link, message: Message, signer: int) -> Reply:
        request = bodies.StatReq.decode(message.body, self.config.limits, self.data_models)
        try:
            responses = self.store.stat(request.resource, request.specifiers, self.clock.seconds())
        except StoreError as error:
            raise RequestRefused(error.error_code, error.reason) from error
        return Reply(MessageCode.STAT_ANS, bodies.StatAns(tuple(responses)).encode())

    def signer_certificates(self, values: Iterable[Any]) -> tuple[bytes, ...]:
        """Certificates of the signers of stored values, so receivers can verify them."""
        own = self.identity.certificate_der
        found: dict[bytes, bytes] = {}
        for value in values:
            identity = value.signature.identity
            der = self.credentials.certificate_for_signer(
                identity.value
            ) or self.certificates.certificate_for(identity.value)
            if der is not None and der != own:
                found[identity.value] = der
        return tuple(found.values())

    # -- replication and hand-over ----------------------------------------

    def replicate(
        self, resource: int, kind_data: Iterable[Any], body: bytes | None = None
    ) -> Deferred[list[int]]:
        """
        Copy a just-stored value to the next successors; fires with who took it.

        ``body`` is the original StoreReq as it came: each replica gets
        those bytes with its replica_number, so the values are encoded at
        most once however many successors take them.
        """
        targets = self.topology.successors[: self.config.replicas]
        if not targets:
            return succeed([])
        kind_data = tuple(kind_data)
        if body is None:
            body = bodies.StoreReq(resource, 0, kind_data).encode()
        sends = [
            self.send_store(peer, resource, number + 1, kind_data=kind_data, body=body)
            for number, peer in enumerate(targets)
        ]

        def collect(results: list[tuple[bool, Any]]) -> list[int]:
            holders = self.replica_holders.setdefault(resource, set())
            done = []
            for peer, (ok, _) in zip(targets, results):
                if ok:
                    holders.add(peer)
                    done.append(peer)
            return done

        return DeferredList(sends, consumeErrors=True).addCallback(collect)

    def replicate_all(self) -> None:
        """Make sure every value we are primary for sits on our first successors."""
        targets = self.topology.successors[: self.config.replicas]
        held = self.store.resources()
        # Forget the holders of resources that expired or went elsewhere:
        # otherwise every resource ever held would keep its entry.
        still = set(held)
        for gone in [r for r in self.replica_holders if r not in still]:
            del self.replica_holders[gone]
        for resource in held:
            if not self.topology.is_responsible(resource):
                continue
            holders = self.replica_holders.setdefault(resource, set())
            for number, peer in enumerate(targets):
                if peer in holders:
                    continue
                holders.add(peer)
                self.send_store(peer, resource, number + 1).addErrback(
                    self._replication_failed, peer, resource
                )

    def _replication_failed(self, failure: Failure, peer: int, resource: int) -> None:
        # Forget the holder so the next round tries again (or picks another peer).
        self.replica_holders.get(resource, set()).discard(peer)
        self.log.debug(
            "replica to {peer} failed: {why}", peer=id_short(peer), why=failure.getErrorMessage()
        )

    def peer_gone(self, peer: int) -> None:
        """``peer`` failed or restarted empty: it holds none of our replicas any more."""
        for holders in self.replica_holders.values():
            holders.discard(peer)

    def maintain(self) -> None:
        """
        One stabilisation round: forget expired values, fill in missing
        replicas, store our certificates where they are due.
        """
        expired = self.store.expire(self.clock.seconds())
        if expired:
            self.log.debug("expired {count} stored values", count=expired)
        self.replicate_all()
        if self.membership.in_ring():
            self.publish_certificates()

    # -- certificates in the overlay (RFC 6940 s8) --------------------------

    def publish_certificates(self) -> None:
        """
        Store our certificate (CERTIFICATE_BY_NODE) and each user
        credential's (CERTIFICATE_BY_USER) unless stored within the last
        half lifetime; a failed store is tried again next round.
        """
        due = [(CERTIFICATE_BY_NODE, node_match_resource(self.node_id), 0, self.identity)]
        # Every super-node holding a credential for the user writes its own
        # index of the user's array (RFC 6940 s8 leaves the index to us).
        index = self.node_id % CERTIFICATE_BY_USER.max_count
        for credential in self.credentials.all():
            assert credential.user_name is not None
            resource = user_match_resource(credential.user_name)
            due.append((CERTIFICATE_BY_USER, resource, index, credential))
        for kind, resource, position, signer in due:
            key = self._certificate_due(kind, resource, signer)
            if key is None:
                continue
            entry = bodies.ArrayEntry(position, bodies.DataValue(True, signer.certificate_der))
            self.store_values(
                resource, kind.kind_id, [entry], kind.max_lifetime_seconds, signer=signer
            ).addErrback(self._publishing_failed, key, kind)

    def _certificate_due(
        self, kind: Kind, resource: int, signer: NodeIdentity
    ) -> tuple[int, int, bytes] | None:
        """
        The publication key of ``signer``'s certificate at ``resource`` if it
        is due (never stored, or half its lifetime ago), now marked stored; else None.
        """
        key = (kind.kind_id, resource, signer.signer_identity().value)
        now = self.clock.seconds()
        last = self._published.get(key)
        if (
            last is not None
            and now - last < kind.max_lifetime_seconds * CERTIFICATE_REPUBLISH_FRACTION
        ):
            return None
        self._published[key] = now
        return key

    def _certificate_to_carry(
        self, resource: int, kind: int, signer: NodeIdentity
    ) -> tuple[tuple[int, int, bytes], bodies.StoreKindData] | None:
        """
        The user's certificate, as CERTIFICATE_BY_USER values to travel in
        the same StoreReq, when a user credential stores at its own
        Resource-ID (a SIP AOR's registrations: RFC 7904's resource name is
        the user name) and the certificate is due there.

        RFC 6940 s6.4.1 lets one StoreReq carry several Kinds of one
        resource, so a new user's first registration costs one replicated
        store instead of two: about five signatures, five verifications
        and five messages fewer across the holder and its replicas, and a
        fetcher finds the certificate as soon as the registration.
        """
        user_name = signer.user_name
        if (
            user_name is None
            or kind in (k.kind_id for k in CERTIFICATE_KINDS)
            or user_match_resource(user_name) != resource
        ):
            return None
        key = self._certificate_due(CERTIFICATE_BY_USER, resource, signer)
        if key is None:
            return None
        position = self.node_id % CERTIFICATE_BY_USER.max_count
        entry = bodies.ArrayEntry(position, bodies.DataValue(True, signer.certificate_der))
        lifetime = CERTIFICATE_BY_USER.max_lifetime_seconds
        value = self._stored_data(resource, CERTIFICATE_BY_USER.kind_id, entry, lifetime, signer)
        return key, bodies.StoreKindData(CERTIFICATE_BY_USER.kind_id, 0, (value,))

    def _publishing_failed(self, failure: Failure, key: tuple[int, int, bytes], kind: Kind) -> None:
        self._published.pop(key, None)
        self.log.debug(
            "storing our {kind} failed, trying again next round: {why}",
            kind=kind.name,
            why=failure.getErrorMessage(),
        )

    def send_store(
        self,
        peer: int,
        resource: int,
        replica_number: int,
        kind_data: tuple[Any, ...] | None = None,
        body: bytes | None = None,
    ) -> Deferred[Any]:
        """
        Copy what we hold of ``resource`` (or ``kind_data``) to ``peer``.

        ``body``, if given, is ``kind_data`` already encoded as a StoreReq
        for ``resource`` (any replica_number).
        """
        if kind_data is None:
            kind_data = self.store.export(resource, self.clock.seconds())
        if not kind_data:
            return succeed(None)
        if body is None:
            body = bodies.StoreReq(resource, replica_number, tuple(kind_data)).encode()
        else:
            body = bodies.with_replica_number(body, replica_number)
        certificates = self.signer_certificates(v for kd in kind_data for v in kd.values)
        return self.messenger.request(
            Destination.node(peer), MessageCode.STORE_REQ, body, extra_certificates=certificates
        )

    def versions_in(self, in_range: Callable[[int], bool]) -> dict[int, int]:
        """Resource-ID -> version of every resource we hold whose id is ``in_range``."""
        return {r: self.store.version(r) for r in self.store.resources() if in_range(r)}

    def changed_since(self, versions: dict[int, int], in_range: Callable[[int], bool]) -> list[int]:
        """Resources ``in_range`` stored or changed since ``versions`` was taken."""
        return [
            r
            for r in self.store.resources()
            if in_range(r) and self.store.version(r) != versions.get(r)
        ]

    def resource_count(self) -> int:
        """Resources we hold values of, as responsible peer or replica."""
        return len(list(self.store.resources()))

    def primary_resources(self) -> list[int]:
        """The resources we hold as the responsible peer."""
        return [r for r in self.store.resources() if self.topology.is_responsible(r)]

    def hand_over(self, peer: int, resources: Iterable[int]) -> Deferred[HandOver]:
        """Copy whole resources to a peer that takes them over, a few Stores at a time."""
        result = HandOver()
        window = DeferredSemaphore(HAND_OVER_WINDOW)

        def one(resource: int) -> Deferred[Any]:
            def failed(failure: Failure) -> None:
                if failure.check(RequestFailed):
                    result.refused += 1
                    self.log.warn(
                        "peer {peer} refused the hand-over of resource {resource}: {why}",
                        peer=id_short(peer),
                        resource=id_short(resource),
                        why=failure.getErrorMessage(),
                    )
                else:
                    result.unreachable += 1
                    result.reason = failure.getErrorMessage()

            return self.send_store(peer, resource, HAND_OVER_REPLICA_NUMBER).addErrback(failed)

        sends = [window.run(one, resource) for resource in resources]
        return DeferredList(sends, consumeErrors=True).addCallback(lambda _: result)

    # -- the operations users call ------------------------------------------

    def _stored_data(
        self,
        resource: int,
        kind: int,
        value: bodies.StoredValue,
        lifetime: int,
        signer: NodeIdentity | None = None,
    ) -> bodies.StoredData:
        identity = signer if signer is not None else self.identity
        # Storage times must grow for every slot (RFC 6940 s7.4.1.1), also
        # for two stores within one millisecond of the clock.
        storage_time = max(int(self.clock.seconds() * 1000), self._last_storage_time + 1)
        self._last_storage_time = storage_time
        value_bytes = bodies.encode_stored_value(value)
        signer_identity = identity.signer_identity()
        signature = identity.sign(
            bodies.stored_data_signature_input(
                resource, kind, storage_time, value_bytes, signer_identity
            )
        )
        return bodies.StoredData(storage_time, lifetime, value, signature)

    def store_values(
        self,
        resource: int,
        kind: int,
        values: Iterable[Any],
        lifetime: int,
        signer: NodeIdentity | None = None,
    ) -> Deferred[OperationResult]:
        """
        Sign and store values of one kind at the responsible peer.

        ``signer`` signs the values and the request instead of the node's
        identity: one of its user credentials.
        """
        identity = signer if signer is not None else self.identity
        # Our own certificates must stay known here, however many strangers'
        # the cache has seen since (it forgets the least recently used).
        self.certificates.add_identity(identity)
        stored = tuple(
            self._stored_data(resource, kind, value, lifetime, identity) for value in values
        )
        kind_data = bodies.StoreKindData(kind, 0, stored)
        carried = self._certificate_to_carry(resource, kind, identity)
        if carried is None:
            return self._store_kinds(resource, (kind_data,), identity)
        key, certificate = carried

        def without_certificate(failure: Failure) -> Deferred[OperationResult]:
            # The certificate is published again next round; a refusal must
            # not cost the values themselves (a timeout would only repeat).
            self._published.pop(key, None)
            if failure.check(RequestFailed) is None:
                return fail(failure)
            return self._store_kinds(resource, (kind_data,), identity)

        return self._store_kinds(resource, (kind_data, certificate), identity).addErrback(
            without_certificate
        )

    def _store_kinds(
        self, resource: int, kind_data: tuple[Any, ...], identity: NodeIdentity
    ) -> Deferred[OperationResult]:
        """One original StoreReq of ``kind_data`` (signed values) at the responsible peer."""
        if self._responsible_here(resource):
            try:
                self.store.store_request(
                    resource,
                    kind_data,
                    self.clock.seconds(),
                    replica_number=0,
                    request_signer=self.certificates.identity_for(identity.signer_identity()),
                )
            except StoreError as error:
                return fail(RequestFailed(error.reason, error.error_code))
            return self.replicate(resource, list(kind_data)).addCallback(
                lambda replicas: OperationResult(
                    resource, self.node_id, (self.node_id,), replicas=tuple(replicas)
                )
            )
        body = bodies.StoreReq(resource, 0, kind_data).encode()

        def done(answer: Answer) -> OperationResult:
            replicas = tuple(
                dict.fromkeys(
                    peer for response in answer.body.kind_responses for peer in response.replicas
                )
            )
            return OperationResult(resource, answer.responder, answer.route, replicas=replicas)

        return self.messenger.request(
            Destination.resource(resource), MessageCode.STORE_REQ, body, signer=identity
        ).addCallback(done)

    def fetch_values(
        self, resource: int, kind: int, specifier: Any | None = None
    ) -> Deferred[tuple[OperationResult, tuple[Any, ...]]]:
        """
        Fetch the live values of one kind; fires with (result, StoredData tuple).

        Values from another peer are checked first (:meth:`checked_values`).
        """
        specifier = specifier or bodies.StoredDataSpecifier(
            kind, 0, data_model=self.data_models.get(kind)
        )
        if self._responsible_here(resource):
            responses = self.store.fetch(resource, (specifier,), self.clock.seconds())
            values = tuple(v for r in responses for v in r.values)
            return succeed((OperationResult(resource, self.node_id, (self.node_id,)), values))
        body = bodies.FetchReq(resource, (specifier,)).encode()

        def done(answer: Answer) -> Deferred[tuple[OperationResult, tuple[Any, ...]]]:
            fetched = [
                (int(response.kind), value)
                for response in answer.body.kind_responses
                for value in response.values
            ]
            result = OperationResult(resource, answer.responder, answer.route)
            return self.checked_values(resource, fetched, answer.responder).addCallback(
                lambda values: (result, values)
            )

        return self.messenger.request(
            Destination.resource(resource), MessageCode.FETCH_REQ, body
        ).addCallback(done)

    def checked_values(
        self, resource: int, fetched: list[tuple[int, Any]], responder: int
    ) -> Deferred[tuple[Any, ...]]:
        """
        The fetched (Kind-ID, StoredData) values whose signature and access
        policy hold, as the responsible peer should have checked them.

        A peer's word is not enough: the responsible peer may lie.  Values
        whose signer's certificate is unknown are checked again after
        fetching the certificates kept for that Resource-ID (RFC 6940 s8);
        values that still fail are dropped, and logged.
        """
        self._learn_certificates(fetched)
        unknown = {
            kind_id
            for kind_id, value in fetched
            if self.certificates.identity_for(value.signature.identity) is None
        }
        wanted: set[int] = set()
        for kind_id in unknown:
            kind = self.store.kinds.get(kind_id)
            certificate_kind = certificate_kind_for(kind) if kind is not None else None
            if certificate_kind is not None and kind not in CERTIFICATE_KINDS:
                wanted.add(certificate_kind.kind_id)
        lookups = [
            self.fetch_values(resource, certificate_kind_id).addCallbacks(
                self._learn_fetched_certificates, lambda failure: None, (certificate_kind_id,)
            )
            for certificate_kind_id in sorted(wanted)
        ]

        def check(_: object) -> tuple[Any, ...]:
            return tuple(
                value
                for kind_id, value in fetched
                if self._fetched_value_holds(resource, kind_id, value, responder)
            )

        return DeferredList(lookups, consumeErrors=True).addCallback(check)

    def _learn_fetched_certificates(
        self, outcome: tuple[OperationResult, tuple[Any, ...]], kind_id: int
    ) -> None:
        self._learn_certificates([(kind_id, value) for value in outcome[1]])

    def _learn_certificates(self, fetched: Iterable[tuple[int, Any]]) -> None:
        """Remember the certificates that certificate Kinds' values carry, if trusted."""
        certificate_kinds = {kind.kind_id for kind in CERTIFICATE_KINDS}
        for kind_id, value in fetched:
            if kind_id not in certificate_kinds:
                continue
            payload = value.value.value
            if not payload.exists:
                continue
            try:
                self.certificates.identify(payload.value)
            except SignatureError:
                continue  # not a certificate this overlay trusts: the check drops the value

    def _fetched_value_holds(self, resource: int, kind_id: int, value: Any, responder: int) -> bool:
        kind = self.store.kinds.get(kind_id)
        try:
            if kind is None:
                raise AccessDenied(f"unknown Kind-ID {kind_id}")
            signer = self._verify_stored(resource, kind_id, value)
            check_access(kind, resource, value.value, signer)
        except (OverlayError, AccessDenied) as error:
            held_back = self._refusal_log.admit(f"fetched from {id_short(responder)}")
            if held_back is not None:
                self.log.warn(
                    "dropped a value peer {peer} answered for {resource}: {why}"
                    " ({held_back} more from it since the last line)",
                    peer=id_short(responder),
                    resource=id_short(resource),
                    why=str(error),
                    held_back=held_back,
                )
            return False
        return True

    def _verify_stored(self, resource: int, kind: int, value: Any) -> CertifiedIdentity:
        """Check a fetched value's signature: the storing peer must not be able to forge it."""
        signed = bodies.stored_data_signature_input(
            resource,
            kind,
            value.storage_time,
            bodies.encode_stored_value(value.value),
            value.signature.identity,
        )
        try:
            return self.certificates.verify_signer(value.signature, signed)
        except SignatureError as error:
            raise OverlayError(f"a fetched value has a bad signature: {error}") from error

    def put(self, name: str, value: bytes, lifetime: int = 3600) -> Deferred[OperationResult]:
        """Store a DATA value under a resource name (admin API, demo)."""
        return self.store_values(
            resource_id(name), DATA.kind_id, [bodies.DataValue(True, value)], lifetime
        )

    def get(self, name: str) -> Deferred[OperationResult]:
        """Fetch the DATA value stored under a resource name."""

        def done(outcome: tuple[OperationResult, tuple[Any, ...]]) -> OperationResult:
            result, values = outcome
            live = [v for v in values if v.value.exists]
            if not live:
                return evolve(result, found=False)
            return evolve(result, found=True, value=live[-1].value.value)

        return self.fetch_values(resource_id(name), DATA.kind_id).addCallback(done)

    def put_dictionary_entry(
        self,
        resource_name: str,
        kind_id: int,
        key: bytes,
        value: bytes,
        lifetime_seconds: int,
        signer: NodeIdentity | None = None,
    ) -> Deferred[None]:
        entry = bodies.DictionaryEntry(key, bodies.DataValue(True, value))
        return self.store_values(
            resource_id(resource_name), kind_id, [entry], lifetime_seconds, signer
        ).addCallback(lambda _: None)

    def remove_dictionary_entry(
        self, resource_name: str, kind_id: int, key: bytes, signer: NodeIdentity | None = None
    ) -> Deferred[None]:
        """
        Delete an entry: store a tombstone (exists = False).

        The tombstone lives as long as the Kind lets any value live, so
        until it is gone no older value of the entry can be stored over it
        (an old signed registration replayed); after that the replay bound
        refuses such values anyway.
        """
        entry = bodies.DictionaryEntry(key, bodies.DataValue(False, b""))
        kind = self.store.kinds.get(kind_id)
        lifetime = kind.max_lifetime_seconds if kind is not None else 0
        return self.store_values(
            resource_id(resource_name), kind_id, [entry], lifetime, signer
        ).addCallback(lambda _: None)

    def get_dictionary(self, resource_name: str, kind_id: int) -> Deferred[dict[bytes, bytes]]:
        def collect(outcome: tuple[OperationResult, tuple[Any, ...]]) -> dict[bytes, bytes]:
            entries: dict[bytes, bytes] = {}
            for value in outcome[1]:
                entry = value.value
                if entry.value.exists:
                    entries[entry.key] = entry.value.value
            return entries

        model = self.data_models.get(kind_id, bodies.DataModel.DICTIONARY)
        specifier = bodies.StoredDataSpecifier(kind_id, 0, data_model=model)
        return self.fetch_values(resource_id(resource_name), kind_id, specifier).addCallback(
            collect
        )
