"""
The enrolment server's decisions (RFC 6940 s11.3), without the network.

:class:`CertificateIssuer` takes a decoded :class:`EnrolmentRequest`, the
requester's address and the time, and either returns the certificate the
CA grants or raises :class:`EnrolmentRefused` with the HTTP status to
answer, a message for the requester and the reason for the operator's log.
In order:

1. A source or account that failed too many logins lately is refused
   (429) without its password being checked (``LoginThrottle``: 20 a
   minute per address, 60 per account), so guessing stays slow even from
   many addresses; so is a request while too many checks already run (503).
2. The account's password is checked (scrypt); a wrong password or an
   unknown account is the same 403, and counts as a failed login.
3. Without ``node-certificate`` the account must hold the ``peer`` grant:
   the CA issues a node certificate with a Node-ID it draws at random
   (whatever the CSR asks for) and the account's name as the user name.
4. With ``node-certificate`` the account must hold the ``user`` grant, and
   that certificate must be one this CA issued, valid now, for this
   overlay, and for the very key of the CSR: only the super-node holding
   that key can ask, so nobody gets a user certificate bound to someone
   else's Node-ID.  Its Node-ID is copied into the user certificate.
"""

from __future__ import annotations

from collections.abc import Callable

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from p2psip.enrolment.accounts import Account, AccountsFile, Grant
from p2psip.enrolment.authority import OverlayAuthority, RequestRefused, load_csr, random_node_id
from p2psip.enrolment.requests import EnrolmentRequest
from p2psip.overlay.certificates import CertificateRefused, public_key_der
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.util.ids import id_hex

#: Seconds a throttled requester is told to wait (one failure's worth of
#: refill for a source is 3 s; a minute lets the whole bucket refill).
RETRY_AFTER_SECONDS = 60
#: Password checks running at once (each is one scrypt computation).
MAX_CHECKS_IN_FLIGHT = 4

#: Runs a password check somewhere (at once, or in a thread) and fires with its result.
PasswordCheckRunner = Callable[[Callable[[], "Account | None"]], "Deferred[Account | None]"]


class EnrolmentRefused(Exception):
    """
    A request the CA does not grant.

    ``status`` is the HTTP status, ``message`` what the requester is told,
    ``reason`` what the operator's log says (it may name more than the
    requester should learn).
    """

    def __init__(self, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.reason = reason or message


@frozen
class Issued:
    """A granted request: the DER certificate and what it names."""

    certificate: bytes
    node_id: int
    user_name: str
    user_certificate: bool


def check_now(check: Callable[[], Account | None]) -> Deferred[Account | None]:
    """Run a password check at once, in the caller's thread (tests, and the default)."""
    return maybeDeferred(check)


class CertificateIssuer:
    """
    Checks credentials and grants CSRs on behalf of one overlay CA.

    A password check costs a scrypt computation (tens of milliseconds of
    CPU).  ``run_check`` runs it: at once by default, in a thread pool on
    the enrolment server, so that the reactor (and the overlay node beside
    it) never waits for one.  At most ``max_checks_in_flight`` run at a
    time; past that a request is answered 503 without being checked, so a
    flood of logins from many addresses queues no unbounded work.
    """

    def __init__(
        self,
        authority: OverlayAuthority,
        accounts: AccountsFile,
        clock: IReactorTime,
        throttle: LoginThrottle | None = None,
        run_check: PasswordCheckRunner = check_now,
        max_checks_in_flight: int = MAX_CHECKS_IN_FLIGHT,
    ) -> None:
        self.authority = authority
        self.accounts = accounts
        self.clock = clock
        self.throttle = throttle if throttle is not None else LoginThrottle(clock)
        self.run_check = run_check
        self.max_checks_in_flight = max_checks_in_flight
        self.checks_in_flight = 0

    def grant(self, request: EnrolmentRequest, source: str | None) -> Deferred[Issued]:
        """The certificate ``request`` earns, or a failure with :class:`EnrolmentRefused`."""
        name = request.username
        if self.throttle.blocked(source, name):
            return fail(
                EnrolmentRefused(
                    429,
                    f"too many failed logins; try again in {RETRY_AFTER_SECONDS} seconds",
                    f"refused unchecked after too many failed logins (account {name!r})",
                )
            )
        if self.checks_in_flight >= self.max_checks_in_flight:
            return fail(
                EnrolmentRefused(
                    503,
                    "the enrolment server is busy; try again shortly",
                    f"{self.checks_in_flight} password checks already running (account {name!r})",
                )
            )
        self.checks_in_flight += 1

        def checked(account: Account | None) -> Account | None:
            self.checks_in_flight -= 1
            return account

        def check_failed(failure: Failure) -> Failure:
            self.checks_in_flight -= 1
            return failure

        password = request.password
        checking = self.run_check(lambda: self.accounts.check(name, password))
        checking.addCallbacks(checked, check_failed)
        return checking.addCallback(self._issue, request, source)

    def _issue(
        self, account: Account | None, request: EnrolmentRequest, source: str | None
    ) -> Issued:
        name = request.username
        if account is None:
            self.throttle.failed(source, name)
            raise EnrolmentRefused(
                403, "wrong account name or password", f"wrong password or no account {name!r}"
            )
        now = self.clock.seconds()
        try:
            csr = load_csr(request.csr)
        except RequestRefused as e:
            raise EnrolmentRefused(400, f"unusable CSR: {e}") from None
        if request.node_certificate is None:
            if not account.may(Grant.PEER):
                raise EnrolmentRefused(
                    403,
                    f"account {name} may not get node certificates (it has no 'peer' grant)",
                )
            node_id = random_node_id()
            user_certificate = False
        else:
            if not account.may(Grant.USER):
                raise EnrolmentRefused(
                    403,
                    f"account {name} may not get user certificates (it has no 'user' grant)",
                )
            node_id = self._node_id_of(request.node_certificate, csr, now)
            user_certificate = True
        key = csr.public_key()
        der = self.authority.issue(
            key,  # type: ignore[arg-type]  # load_csr checked it is ECDSA P-256
            node_id=node_id,
            user_name=name,
            now=now,
        )
        return Issued(der, node_id, name, user_certificate)

    def _node_id_of(
        self, node_certificate: bytes, csr: x509.CertificateSigningRequest, now: float
    ) -> int:
        """The Node-ID of a super-node's certificate, if it is ours and holds the CSR's key."""
        try:
            certificate = x509.load_der_x509_certificate(node_certificate)
            identity = self.authority.trust(lambda: now).identify(certificate)
            certificate_key = public_key_der(certificate)
        except CertificateRefused as e:
            raise EnrolmentRefused(403, f"the node certificate is not usable here: {e}") from None
        except Exception as e:  # the parser's own errors, for hostile input
            raise EnrolmentRefused(
                400, f"the node certificate does not parse: {type(e).__name__}"
            ) from None
        csr_key = csr.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if certificate_key != csr_key:
            raise EnrolmentRefused(
                403,
                "the CSR is not made with the key of the node certificate: a user certificate "
                "is issued only to the super-node that holds that key",
                f"CSR key differs from the key of node {id_hex(identity.node_id)}'s certificate",
            )
        return identity.node_id
