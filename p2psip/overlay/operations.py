"""
What a ring member and a client both offer: the operations users call
(store and fetch, the SIP usage's dictionary entries, AppAttach), the
link listener every link reports to, and the read-only surface the
status page and ``/metrics`` read.

:class:`~p2psip.overlay.node.OverlayNode` (a peer) and
:class:`~p2psip.overlay.client.OverlayClient` (a client, RFC 6940
s3.2.1) build different parts but hand their requests to the same
messenger, connectivity, storage and applications parts, so these
methods are written once, here.  A peer answers for its own range
without a message; a client always asks through its attachment peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from random import Random
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from p2psip.interfaces import ISuperNodeOverlay

from p2psip.overlay import bodies
from p2psip.overlay.app_attach import Applications
from p2psip.overlay.connectivity import Connectivity
from p2psip.overlay.counters import Counters
from p2psip.overlay.certificates import TrustPolicy
from p2psip.overlay.identity import CertificateCache, NodeIdentity
from p2psip.overlay.kinds import DEFAULT_KINDS, Kind, data_models, with_registration_quota
from p2psip.overlay.link_table import LinkTable
from p2psip.overlay.links import Connector, Link
from p2psip.overlay.membership import Membership, NodeState
from p2psip.overlay.message import Destination, MessageCode, overlay_hash
from p2psip.overlay.messaging import Answer, Messenger
from p2psip.overlay.parameters import OverlayConfig
from p2psip.overlay.results import OperationResult
from p2psip.overlay.storage import DataStore
from p2psip.overlay.storage_service import StorageService
from p2psip.overlay.topology import ChordTopology
from p2psip.overlay.user_credentials import UserCredentials
from p2psip.util.ids import resource_id


@implementer(ISuperNodeOverlay)
class OverlayOperations:
    """The shared surface; subclasses build the parts named below."""

    node_id: int
    local_node_id: int
    identity: NodeIdentity
    clock: IReactorTime
    config: OverlayConfig
    kinds: dict[int, Kind]
    random: Random
    counters: Counters
    certificates: CertificateCache
    membership: Membership
    topology: ChordTopology
    links: LinkTable
    messenger: Messenger
    connectivity: Connectivity
    applications: Applications
    storage: StorageService
    user_credentials: UserCredentials

    def _build_common_parts(
        self,
        *,
        identity: NodeIdentity,
        clock: IReactorTime,
        connector: Connector,
        advertised: tuple[str, int],
        config: OverlayConfig,
        kinds: dict[int, Kind] | None,
        rng: Random | None,
        trust: TrustPolicy | None,
        holds_data: bool,
    ) -> None:
        """
        Build the parts peers and clients share, wired together.

        ``trust`` decides whose certificates are believed, on links (the
        connector's TLS) and on signatures: the overlay root (roles pass
        OverlayRootTrust) or, when None, self-signed mode.  ``holds_data``
        is False on a client, whose storage only asks others.
        """
        self.identity = identity
        self.node_id = identity.node_id
        self.local_node_id = self.node_id
        self.clock = clock
        self.config = config
        self.kinds = with_registration_quota(
            dict(kinds or DEFAULT_KINDS), config.registrations_per_signer
        )
        #: Only spreads periodic timers; simulations pass a seeded one.
        self.random = rng or Random()
        self.counters = Counters()
        self.membership = Membership()
        self.topology = ChordTopology(self.node_id, config.successors, config.predecessors)
        self.links = LinkTable()
        self.certificates = CertificateCache(trust=trust)
        self.certificates.add_identity(identity)
        #: The user certificates this node signs users' values with.
        self.user_credentials = UserCredentials(identity, self.certificates)
        self.messenger = Messenger(
            identity=identity,
            certificates=self.certificates,
            clock=clock,
            config=config,
            overlay=overlay_hash(config.overlay_name),
            topology=self.topology,
            links=self.links,
            membership=self.membership,
            counters=self.counters,
            data_models=data_models(self.kinds),
        )
        self.connectivity = Connectivity(
            messenger=self.messenger,
            links=self.links,
            topology=self.topology,
            membership=self.membership,
            connector=connector,
            listener=self,
            clock=clock,
            config=config,
            counters=self.counters,
            advertised_host=advertised[0],
            advertised_port=advertised[1],
        )
        self.applications = Applications(self.messenger, self.connectivity)
        self.storage = StorageService(
            messenger=self.messenger,
            store=DataStore(self.kinds, self.certificates),
            topology=self.topology,
            membership=self.membership,
            identity=identity,
            certificates=self.certificates,
            clock=clock,
            config=config,
            credentials=self.user_credentials,
            holds_data=holds_data,
        )

    @property
    def state(self) -> NodeState:
        return self.membership.state

    @property
    def advertised_host(self) -> str:
        return self.connectivity.advertised_host

    @property
    def advertised_port(self) -> int:
        return self.connectivity.advertised_port

    @property
    def request_observers(self) -> list[Callable[[str, float, bool], None]]:
        """Called as (method name, seconds, answered) when a request of ours ends."""
        return self.messenger.request_observers

    def peer_address(self, peer: int) -> tuple[str, int] | None:
        """Where ``peer``'s overlay listener is, if an Attach told us."""
        return self.connectivity.addresses.get(peer)

    def has_link(self, peer: int) -> bool:
        return self.links.has_link(peer)

    def links_to(self, peer: int) -> list[Link]:
        return self.links.links_to(peer)

    def all_links(self) -> list[Link]:
        return self.links.all_links()

    def open_link_count(self) -> int:
        """Open overlay links, identified or not."""
        return len(self.links)

    def links_by_path(self) -> dict[str, int]:
        """Open links by how they were made: ``connect`` or the mediator's method."""
        paths: dict[str, int] = {}
        for link in self.links.all_links():
            paths[link.path] = paths.get(link.path, 0) + 1
        return paths

    def pending_request_count(self) -> int:
        """Requests of ours still waiting for an answer."""
        return len(self.messenger.transactions)

    # -- what links report (LinkListener) ---------------------------------------

    def link_established(self, link: Link) -> None:
        self.connectivity.link_established(link)

    def message_received(self, link: Link, data: bytes) -> None:
        self.messenger.message_received(link, data)

    def link_lost(self, link: Link) -> None:
        self.connectivity.link_lost(link)

    def link_for(self, peer: int) -> Link | None:
        return self.links.link_for(peer)

    # -- operations ----------------------------------------------------------------

    def store_values(
        self, resource: int, kind: int, values: Iterable[Any], lifetime: int
    ) -> Deferred[OperationResult]:
        """Sign and store values of one kind at the responsible peer."""
        return self.storage.store_values(resource, kind, values, lifetime)

    def fetch_values(
        self, resource: int, kind: int, specifier: Any | None = None
    ) -> Deferred[tuple[OperationResult, tuple[Any, ...]]]:
        """Fetch the live values of one kind; fires with (result, StoredData tuple)."""
        return self.storage.fetch_values(resource, kind, specifier)

    def put(self, name: str, value: bytes, lifetime: int = 3600) -> Deferred[OperationResult]:
        """Store a DATA value under a resource name (admin API, demo)."""
        return self.storage.put(name, value, lifetime)

    def get(self, name: str) -> Deferred[OperationResult]:
        """Fetch the DATA value stored under a resource name."""
        return self.storage.get(name)

    def lookup(self, name: str) -> Deferred[OperationResult]:
        """Find the peer responsible for a name and the route to it (a routed Ping)."""
        return self.lookup_id(resource_id(name))

    def lookup_id(self, resource: int) -> Deferred[OperationResult]:
        if self.membership.in_ring() and self.topology.is_responsible(resource):
            return succeed(OperationResult(resource, self.node_id, (self.node_id,)))
        return self.messenger.request(
            Destination.resource(resource), MessageCode.PING_REQ, bodies.PingReq().encode()
        ).addCallback(lambda answer: OperationResult(resource, answer.responder, answer.route))

    def find_owner(self, target: int) -> Deferred[tuple[int, tuple[str, int]]]:
        """
        The peer responsible for ``target`` and where its overlay listener is
        (an Attach to that id, answered by its owner): how the ring page walks
        the ring peer by peer.
        """
        if self.membership.in_ring() and self.topology.is_responsible(target):
            return succeed((self.node_id, (self.advertised_host, self.advertised_port)))

        def answered(answer: Answer) -> tuple[int, tuple[str, int]]:
            self.connectivity.remember_candidates(answer.responder, answer.body)
            address = answer.body.candidates[0].address
            return answer.responder, (address.host, address.port)

        return self.messenger.request(
            Destination.node(target), MessageCode.ATTACH_REQ, self.connectivity.attach_request()
        ).addCallback(answered)

    # IOverlayStorage and IApplicationRegistry -----------------------------------

    def user_credential(self, user_name: str) -> NodeIdentity | None:
        return self.user_credentials.credential_for(user_name)

    def add_user_certificate(self, certificate_der: bytes) -> NodeIdentity:
        """
        Sign for the user a certificate names (issued for our key and
        Node-ID); stored in the overlay at once when we reach a ring.

        :raises p2psip.overlay.user_credentials.CredentialError: not usable here.
        """
        credential = self.user_credentials.add_certificate(certificate_der)
        if self.membership.reaches_ring():
            self.storage.publish_certificates()
        return credential

    def put_dictionary_entry(
        self,
        resource_name: str,
        kind_id: int,
        key: bytes,
        value: bytes,
        lifetime_seconds: int,
        signer: object | None = None,
    ) -> Deferred[None]:
        return self.storage.put_dictionary_entry(
            resource_name, kind_id, key, value, lifetime_seconds, _credential(signer)
        )

    def remove_dictionary_entry(
        self, resource_name: str, kind_id: int, key: bytes, signer: object | None = None
    ) -> Deferred[None]:
        return self.storage.remove_dictionary_entry(
            resource_name, kind_id, key, _credential(signer)
        )

    def get_dictionary(self, resource_name: str, kind_id: int) -> Deferred[dict[bytes, bytes]]:
        return self.storage.get_dictionary(resource_name, kind_id)

    def resolve_application(self, node_id: int, application: int) -> Deferred[tuple[str, int]]:
        return self.applications.resolve(node_id, application)

    def set_application_address(self, application: int, host: str, port: int) -> None:
        self.applications.set_address(application, host, port)

    def node_serving_at(self, host: str, port: int) -> int | None:
        """The node an AppAttach answer last named ``host:port`` for (connecting by Node-ID)."""
        return self.applications.node_at(host, port)


def _credential(signer: object | None) -> NodeIdentity | None:
    """The SIP layer hands back, opaquely, what :meth:`OverlayNode.user_credential` gave it."""
    if signer is not None and not isinstance(signer, NodeIdentity):
        raise TypeError(f"a signer must come from user_credential(), not {type(signer).__name__}")
    return signer
