"""
Enrolment in the ring roles: the bootstrap's enrolment server, and a
peer's enrolment on first start.

* :func:`bootstrap_enrolment_server` wires the bootstrap's CA to its
  accounts file and to the configuration document that describes this
  ring (overlay name, root, enrolment URL, the bootstrap's own address
  once it listens, its ``--bootstrap`` peers, the Kinds and timers of the
  node), listening on ``--enrol-listen``.
* :class:`FirstEnrolment` is the service a peer runs instead of its ring
  role while it has no certificate: on start it enrols (with the reactor,
  never blocking it), writes ``node-key.pem``, ``node-cert.pem``,
  ``overlay-root.pem`` and ``overlay-config.xml``, then builds the ring
  role and starts it as its child.  A server that cannot be reached yet
  (or asks to wait) is tried again; a refusal (wrong password, a pin that
  does not match) is logged critical and stops the process, since trying
  again cannot help.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python import usage
from twisted.python.failure import Failure

from p2psip.enrolment.accounts import AccountsFile, AccountsFileError, accounts_path
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.client import (
    EnrolmentFailed,
    EnrolmentUnavailable,
    RootPin,
    enrol_node,
)
from p2psip.enrolment.configuration import (
    BootstrapNode,
    OverlayConfiguration,
    bootstrap_nodes,
    describe_kinds,
)
from p2psip.enrolment.node_files import NodeFileError, load_or_make_key, save_node_enrolment
from p2psip.enrolment.server import EnrolmentServer, build_enrolment_server
from p2psip.overlay.node import OverlayNode
from p2psip.roles.ring_credentials import NodeRoleConfig, overlay_root
from p2psip.roles.ring_options import RingRoleConfig
from p2psip.util.endpoints import endpoint_interface, parse_tcp_client_description
from p2psip.util.ids import id_hex
from p2psip.util.local_address import is_wildcard
from p2psip.util.logs import Logger
from p2psip.util.reactor import IRoleReactor, stopper

#: Seconds between attempts while the enrolment server cannot be reached.
ENROL_RETRY_SECONDS = 5.0


def bootstrap_enrolment_server(
    config: RingRoleConfig, node: OverlayNode, authority: OverlayAuthority, reactor: IRoleReactor
) -> EnrolmentServer:
    """The bootstrap's enrolment server; a broken accounts file stops the role with its line."""
    authority_config = config.security.authority
    assert authority_config is not None
    try:
        accounts = AccountsFile.load(accounts_path(config.data_dir), missing_ok=True)
    except AccountsFileError as error:
        raise usage.UsageError(f"the enrolment accounts: {error}") from None
    public_host = config.advertised_host
    hosts = [public_host]
    interface = endpoint_interface(authority_config.enrol_listen)
    if interface and not is_wildcard(interface) and interface != public_host:
        # The URL peers are told names the first host: the listener's own
        # interface, unless the operator said where the bootstrap is reached.
        if config.advertise is None:
            hosts.insert(0, interface)
        else:
            hosts.append(interface)
    joined_through: list[BootstrapNode] = []
    for description in config.bootstrap:
        try:
            joined_through.append(BootstrapNode(*parse_tcp_client_description(description)))
        except ValueError:
            continue  # not plain TCP (tls:, unix:): not something the document can name
    server: EnrolmentServer

    def describe() -> OverlayConfiguration:
        addresses = [(node.advertised_host, node.advertised_port)] if node.advertised_port else []
        addresses += [(b.address, b.port) for b in joined_through]
        url = server.url
        overlay = config.overlay
        return OverlayConfiguration(
            instance_name=overlay.overlay_name,
            sequence=0,
            expiration=0,
            root_der=authority.root_der,
            enrolment_servers=(url,) if url else (),
            bootstrap_nodes=bootstrap_nodes(addresses),
            kinds=describe_kinds(node.kinds.values()),
            max_message_size=overlay.limits.max_message_bytes,
            initial_ttl=overlay.initial_ttl,
            chord_ping_interval_seconds=max(1, round(overlay.ping_interval_seconds)),
            chord_update_interval_seconds=max(1, round(overlay.update_interval_seconds)),
        )

    server = build_enrolment_server(
        reactor,
        authority=authority,
        accounts=accounts,
        listen=authority_config.enrol_listen,
        hosts=hosts,
        describe=describe,
        announce=True,
    )
    return server


class FirstEnrolment(MultiService):
    """
    A peer's role before it holds a certificate: enrol, then become the ring role.

    ``build`` makes the ring role from the files enrolment wrote (it reads
    the data directory again).  ``give_up`` is called after a refusal that
    retrying cannot cure; roles stop the reactor.
    """

    log = Logger()
    #: Seconds before trying again when the server cannot be reached.
    retry_seconds = ENROL_RETRY_SECONDS

    def __init__(
        self,
        config: NodeRoleConfig,
        reactor: IRoleReactor,
        build: Callable[[], IService],
        reason: str,
        give_up: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        assert config.security.enrol is not None
        self.config = config
        self.enrol = config.security.enrol
        self.reactor = reactor
        self.build = build
        self.reason = reason
        self.give_up = give_up if give_up is not None else stopper(reactor)
        self.role: IService | None = None
        #: Fires with the ring role once it is built and started.
        self.ready: Deferred[IService] = Deferred()
        self._attempt: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None

    def startService(self) -> None:
        super().startService()
        self.log.info("{reason}", reason=self.reason)
        self._try()

    def _try(self) -> None:
        self._retry = None
        self._attempt = Deferred.fromCoroutine(self._enrol())
        self._attempt.addErrback(self._failed)

    async def _enrol(self) -> None:
        found = overlay_root(self.config)
        pin = RootPin(
            root_der=found[0] if found is not None else None,
            fingerprint=self.enrol.ca_fingerprint,
        )
        key, _new = load_or_make_key(self.config.data_dir)
        enrolment = await enrol_node(
            self.reactor,
            enrol_url=self.enrol.url,
            pin=pin,
            account=self.enrol.account,
            password=self.enrol.password,
            key=key,
            overlay_name=self.config.overlay.overlay_name,
        )
        if not self.running:
            return
        save_node_enrolment(
            self.config.data_dir,
            key,
            enrolment.certificate_der,
            enrolment.root_der,
            enrolment.document,
        )
        self.log.info(
            "enrolled in overlay {overlay} as node {node_id} (account {account}); certificate "
            "and overlay root written to {directory}",
            overlay=enrolment.configuration.instance_name,
            node_id=id_hex(enrolment.node_id),
            account=enrolment.user_name,
            directory=str(self.config.data_dir),
        )
        role = self.build()
        self.role = role
        role.setServiceParent(self)
        self.ready.callback(role)

    def _failed(self, failure: Failure) -> None:
        if not self.running:
            return
        if failure.check(EnrolmentUnavailable):
            error = failure.value
            assert isinstance(error, EnrolmentUnavailable)
            delay = error.retry_after or self.retry_seconds
            self.log.warn(
                "enrolment: {why}; trying again in {seconds:g} s", why=str(error), seconds=delay
            )
            self._retry = self.reactor.callLater(delay, self._try)
            return
        if failure.check(EnrolmentFailed, NodeFileError, usage.UsageError):
            self.log.critical(
                "cannot enrol this node: {why}; fix --enrol-url, --enrol-user, "
                "--enrol-password-file or --ca-fingerprint (or the account on the bootstrap) "
                "and start again",
                why=failure.getErrorMessage(),
            )
        else:
            self.log.failure("while enrolling this node", failure)
        self.give_up()

    def stopService(self) -> Any:
        stopped = super().stopService()  # not running any more: a cancelled attempt is quiet
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None and not self._attempt.called:
            self._attempt.cancel()
        return stopped
