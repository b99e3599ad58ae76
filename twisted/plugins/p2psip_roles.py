"""twistd plugins for the p2psip roles (imported lazily, one module per role)."""

from typing import Any

from twisted.application.service import IService, ServiceMaker
from twisted.logger import Logger, LogLevel
from twisted.python import usage

from p2psip.util.logs import set_log_level
from p2psip.util.reactor import role_owns_process

log = Logger(namespace="p2psip")


class RoleMaker(ServiceMaker):
    """
    A role's ``makeService``, with the operator's errors it raises (a bad
    file, an unreadable data directory, a full disk: ``UsageError``s whose
    message names the path and the fix) ending twistd with that message
    and status 1 instead of a traceback.  It sets the process's p2psip log
    level from ``--log-level`` first (``p2psip.util.logs``: twistd itself
    writes every level it is given), and makes a role that gives up at
    start-up (a port taken) end the process with a failure status
    (``p2psip.util.reactor.stopper``) instead of twistd's 0.
    """

    def makeService(self, options: Any) -> IService:
        role_owns_process()
        level = options.get("log-level", LogLevel.info)
        set_log_level(level)
        if level == LogLevel.debug:
            log.warn(
                "--log-level debug: lines per request and message, naming peers' addresses "
                "in full; they cost CPU (use for a short session, then info)"
            )
        try:
            service: IService = super().makeService(options)
        except usage.UsageError as error:
            raise SystemExit(f"{self.tapname}: {error}") from None
        return service


bootstrap = RoleMaker(
    "p2psip bootstrap", "p2psip.roles.bootstrap", "Seed peer for a p2psip ring.", "p2psip-bootstrap"
)
peer = RoleMaker(
    "p2psip super-node", "p2psip.roles.peer", "Super-node: stores part of the DHT.", "p2psip-peer"
)
mediator = RoleMaker(
    "p2psip mediator",
    "p2psip.roles.mediator",
    "Public STUN/STUNT rendezvous server.",
    "p2psip-mediator",
)
client = RoleMaker(
    "p2psip client",
    "p2psip.roles.client",
    "Thin client: attached to one peer, with a local SIP adaptor for phones.",
    "p2psip-client",
)
