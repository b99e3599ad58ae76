"""
The SIP part of a super-node: registrar and proxy on the overlay node.

The service is built by the peer role after the overlay service, so that
when twistd starts it the overlay node already exists (``OverlayService``
creates it in its own ``startService``).  It wires the SIP stack as the
registrar's author describes::

    users file --> DigestAuthenticator --> Registrar --+
    overlay node --> OverlayLocationService -----------+--> SipProxy
                                           SipTransport <--> TransactionLayer

and announces the SIP listener to the overlay for AppAttach (application
5060, RFC 7904 section 5), so other super-nodes can forward calls here.

Digest authentication is on unless ``--sip-trusted-network`` asks for it to
be off.  The nonce secret (32 random bytes) is kept in ``DATA_DIR/sip-nonce-secret``
so that nonces survive a restart.  The users file is re-read every
``USERS_REFRESH_SECONDS`` when it changed, so ``p2psip users add`` takes
effect without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from p2psip.sip.digest import ALGORITHMS, DigestAuthenticator
from p2psip.sip.location import SIP_APPLICATION, OverlayLocationService
from p2psip.sip.metrics import CallSetupTimes, SipCollector
from p2psip.sip.proxy import SipProxy
from p2psip.sip.registrar import Registrar
from p2psip.sip.transport import SipTransport
from p2psip.sip.users import UsersFile, UsersFileError
from p2psip.util import gc_tuning
from p2psip.util.endpoints import is_udp, parse_udp_listen_address, split_description

NONCE_SECRET_FILE = "sip-nonce-secret"
NONCE_SECRET_BYTES = 32
USERS_REFRESH_SECONDS = 10.0


def sip_listen_address(text: str) -> str:
    """Coercer for ``--sip``: ``udp:PORT[:interface=ADDR]`` or a Twisted stream endpoint string."""
    if is_udp(text):
        try:
            parse_udp_listen_address(text)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return text
    from p2psip.config import server_endpoint

    return server_endpoint(text)


sip_listen_address.coerceDoc = "udp:PORT[:interface=ADDR] or a stream endpoint such as tcp:5060"  # type: ignore[attr-defined]


def digest_algorithms(text: str) -> str:
    """
    Coercer for ``--sip-digest-algorithms``: a comma-separated list such as ``SHA-256,MD5``.

    Returns the list normalised (upper case, no spaces); see :func:`algorithm_list`.
    """
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALGORITHMS]
    if not names or unknown or len(set(names)) != len(names):
        raise usage.UsageError(
            f"{text!r} is not a list of Digest algorithms: write some of {', '.join(ALGORITHMS)} "
            "separated by commas, preferred first, e.g. SHA-256,MD5"
        )
    return ",".join(names)


digest_algorithms.coerceDoc = "a comma-separated list of SHA-256 and MD5"  # type: ignore[attr-defined]


def algorithm_list(text: str) -> tuple[str, ...]:
    """The algorithms of a ``--sip-digest-algorithms`` value, preferred first."""
    return tuple(digest_algorithms(text).split(","))


def load_or_create_secret(data_dir: str | Path) -> bytes:
    """
    The Digest nonce secret, created (mode 0600) on first use.

    :raises ValueError: naming the file when it exists but is too short.
    """
    path = Path(data_dir) / NONCE_SECRET_FILE
    try:
        secret = path.read_bytes()
    except FileNotFoundError:
        secret = os.urandom(NONCE_SECRET_BYTES)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(handle, secret)
            os.fsync(handle)
        finally:
            os.close(handle)
        return secret
    if len(secret) < 16:
        raise ValueError(
            f"{path}: the nonce secret must hold at least 16 bytes; delete the file to get a new one"
        )
    return secret


def _interface_of(description: str) -> str | None:
    for field in split_description(description)[1:]:
        key, equals, value = field.partition("=")
        if equals and key == "interface" and value:
            return value
    return None


#: The SIP options of every role that can be a super-node (peer, bootstrap).
SIP_OPTION_PARAMETERS: list[Any] = [
    [
        "sip",
        None,
        None,
        "SIP listener, udp:PORT[:interface=ADDR] or tcp:PORT[:interface=ADDR]; "
        "without any the node serves no SIP.",
        sip_listen_address,
    ],
    ["users", None, None, "Digest users file (made with `p2psip users add --file FILE AOR`)."],
    [
        "sip-digest-algorithms",
        None,
        ",".join(ALGORITHMS),
        "Digest algorithms offered in challenges, preferred first; list MD5 first (or alone) for "
        "phones that read only the first challenge and know only MD5.",
        digest_algorithms,
    ],
    [
        "sip-advertise",
        None,
        None,
        "Host other super-nodes and phones reach the SIP listener at "
        "(default: the first --sip interface, else the overlay address).",
    ],
]
SIP_OPTION_FLAGS: list[Any] = [
    [
        "sip-trusted-network",
        None,
        "Accept REGISTER without Digest authentication (closed networks only).",
    ],
]


def check_sip_options(options: Any) -> None:
    """``postOptions`` check: SIP needs a users file unless authentication is explicitly off."""
    if options["sip"] and not options["users"] and not options["sip-trusted-network"]:
        raise usage.UsageError(
            "--sip needs a users file for Digest authentication: give --users FILE (make it with "
            "`p2psip users add --file FILE sip:alice@DOMAIN`), or --sip-trusted-network to run "
            "without authentication on a closed network"
        )


class SipService(Service):
    """
    Registrar and proxy of one super-node, on the node of ``overlay``.

    ``overlay`` is the role's ``OverlayService``; its ``node`` must exist
    when this service starts (it is started after the overlay service).
    """

    log = Logger()

    def __init__(self, options: Any, overlay: Any, reactor: Any, *, freeze_gc: bool = True) -> None:
        self.options = options
        self.overlay = overlay
        self.reactor = reactor
        self.freeze_gc = freeze_gc
        self.users: UsersFile | None = None
        self.registrar: Registrar | None = None
        self.proxy: SipProxy | None = None
        self.transport: SipTransport | None = None
        self.advertised: tuple[str, int] | None = None
        #: Times the proxy's calls once it exists (made by :meth:`add_metrics`).
        self.call_setup_times: CallSetupTimes | None = None
        self._refresh: LoopingCall | None = None

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        options = self.options
        node = self.overlay.node
        if node is None:
            raise RuntimeError(
                "the SIP service must start after the overlay service (it needs the node)"
            )
        domain = options["overlay-name"]
        trusted = bool(options["sip-trusted-network"])
        authenticator = None
        if options["users"]:
            try:
                self.users = UsersFile.load(options["users"])
            except UsersFileError as e:
                raise usage.UsageError(f"{e} (check --users)") from None
        if not trusted:
            assert self.users is not None, (
                "postOptions requires --users without --sip-trusted-network"
            )
            secret = load_or_create_secret(options["data-dir"])
            authenticator = DigestAuthenticator(
                domain,
                secret,
                self.reactor,
                self.users,
                algorithms=algorithm_list(options["sip-digest-algorithms"]),
            )
        location = OverlayLocationService(node, self.reactor)
        users = self.users
        self.registrar = Registrar(
            domain, location, self.reactor, authenticator, users, trusted_network=trusted
        )
        self.transport = SipTransport(self.reactor)
        for description in options["sip"]:
            failures: list[Failure] = []
            self.transport.listen(description).addErrback(failures.append)
            if failures:
                self.transport.stop()
                raise usage.UsageError(failures[0].getErrorMessage())
        host, port, peer_transport = self._advertised_address()
        self.transport.advertised_host = host
        self.advertised = (host, port)
        known = None if users is None else (lambda aor: users.record(aor) is not None)
        self.proxy = SipProxy(
            domain,
            (host, port),
            node,
            location,
            self.registrar,
            self.transport,
            self.reactor,
            is_known_aor=known,
            peer_transport=peer_transport,
        )
        if self.call_setup_times is not None:
            self.call_setup_times.watch(self.proxy)
        self.transport.receiver = self.proxy.transactions
        node.set_application_address(SIP_APPLICATION, host, port)
        if users is not None:
            self._refresh = LoopingCall(self._refresh_users)
            self._refresh.clock = self.reactor
            self._refresh.start(USERS_REFRESH_SECONDS, now=False)
        self.log.info(
            "SIP super-node for {domain} at {host}:{port} ({listeners}); authentication {auth}",
            domain=domain,
            host=host,
            port=port,
            listeners=" ".join(options["sip"]),
            auth="off (trusted network)"
            if trusted
            else f"digest, {len(users.users()) if users else 0} user(s)",
        )
        if self.freeze_gc:
            gc_tuning.tune_for_server()
            joined: Deferred[None] = self.overlay.joined
            joined.addCallback(lambda _: self._freeze() if self.running else None)

    def _freeze(self) -> None:
        gc_tuning.freeze_after_start_up()

    def _advertised_address(self) -> tuple[str, int, str]:
        """Host and port for Via, Record-Route and AppAttach, and the transport peers use."""
        assert self.transport is not None
        options = self.options
        first = options["sip"][0]
        hop = (
            self.transport.local_hop("UDP")
            or self.transport.local_hop("TLS")
            or self.transport.local_hop("TCP")
        )
        assert hop is not None
        transport = (
            "UDP"
            if self.transport.udp_ports
            else ("TLS" if first.lower().startswith(("ssl:", "tls:")) else "TCP")
        )
        host = options["sip-advertise"] or _interface_of(first) or self.overlay.node.advertised_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return host, hop.port, transport

    def _refresh_users(self) -> None:
        assert self.users is not None
        try:
            if self.users.refresh():
                self.log.info(
                    "re-read {path}: {count} user(s)",
                    path=str(self.users.path),
                    count=len(self.users.users()),
                )
        except UsersFileError as e:
            self.log.warn("{why}; the users read before stay in force (fix --users)", why=str(e))

    def stopService(self) -> Any:
        super().stopService()
        if self._refresh is not None and self._refresh.running:
            self._refresh.stop()
        if self.registrar is not None:
            self.registrar.stop()
        if self.proxy is not None:
            for transaction in list(self.proxy.transactions.server_transactions.values()) + list(
                self.proxy.transactions.client_transactions.values()
            ):
                transaction._terminate()
        if self.transport is not None:
            return self.transport.stop()
        return None

    # -- status and metrics ----------------------------------------------------

    def registrations(self) -> tuple[int, int]:
        """AORs with a binding served here, and their bindings."""
        if self.registrar is None:
            return 0, 0
        aors = self.registrar.served_aors()
        return len(aors), sum(len(self.registrar.local_bindings(aor)) for aor in aors)

    def status(self) -> dict[str, Any]:
        """The ``sip`` section of ``/status``."""
        if self.proxy is None or self.transport is None or self.advertised is None:
            return {"state": "starting"}
        aors, bindings = self.registrations()
        users = self.users
        return {
            "address": f"{self.advertised[0]}:{self.advertised[1]}",
            "listeners": list(self.options["sip"]),
            "authentication": "off (trusted network)"
            if self.options["sip-trusted-network"]
            else "digest",
            "users": len(users.users()) if users is not None else None,
            "registrations": {"aors": aors, "bindings": bindings},
            "final_responses": self.proxy.metrics()["final_responses"],
            "requests_in_progress": self.proxy.pending_requests,
            "transactions": self.proxy.transactions.metrics(),
            "transport": self.transport.metrics(),
        }

    def add_metrics(self, registry: CollectorRegistry) -> None:
        """
        SIP metrics for ``/metrics``: the stack's numbers, read at scrape
        time, and call set-up histograms, fed from when the proxy is made
        (or from now, when the service is already running).
        """
        registry.register(
            SipCollector(lambda: self.proxy, lambda: self.transport, self.registrations)
        )
        self.call_setup_times = CallSetupTimes(registry)
        if self.proxy is not None:
            self.call_setup_times.watch(self.proxy)


def add_sip_service(top: Any, overlay: Any, options: Any, reactor: Any) -> SipService | None:
    """
    Add the SIP service to a ring role's MultiService when ``--sip`` was given.

    It goes after the overlay service (whose node it uses) and registers its
    ``/status`` section and ``/metrics`` gauges.
    """
    if not options["sip"]:
        return None
    sip = SipService(options, overlay, reactor)
    sip.setServiceParent(top)
    overlay.status_sections["sip"] = sip.status
    if overlay.registry is not None:
        sip.add_metrics(overlay.registry)
    return sip


__all__ = [
    "SipService",
    "add_sip_service",
    "check_sip_options",
    "SIP_OPTION_PARAMETERS",
    "SIP_OPTION_FLAGS",
    "load_or_create_secret",
    "sip_listen_address",
    "USERS_REFRESH_SECONDS",
]
