"""
Judging the Digest credentials a request carries, for the registrar (401,
``Authorization``) and the proxy (407, ``Proxy-Authorization``) alike.

RFC 3261 s22 gives both the same shape: a request carries zero or more
credential headers, each for one realm; the server uses the one for its
own realm and either accepts it, challenges again (no usable credentials,
or an expired nonce: ``stale=TRUE``), refuses it (403: a wrong password,
an unknown user, or a user who may not speak for that AOR) or finds it
malformed (400).  :class:`CredentialCheck` makes that decision once, with
the two rules that protect the users file:

* every wrong answer counts in the :class:`~p2psip.sip.login_throttle.LoginThrottle`
  (per source address and per AOR), and while either bucket is empty a
  guess is refused unchecked, with the answer a wrong one gets;
* the authenticated user must own the AOR the request speaks for (the
  registrar's To, the proxy's From), as the users file says, so one user's
  password does not let it register or call as another.

It holds no transaction state: callers turn a :class:`Judgement` into
their own response, and the refusals it cannot tell the caller about (the
throttled guesses) are logged here, at most once a minute per source.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from p2psip.sip.blur import blur_flow
from p2psip.sip.digest import DigestAuthenticator, DigestParseError, Verdict, parse_authorization
from p2psip.sip.errors import SipParseError
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.sip.uri import URI, parse_uri
from p2psip.util.log_throttle import LogThrottle
from p2psip.util.logs import Logger


class AccountDirectory(Protocol):
    """Which Digest user owns which AOR (``p2psip.sip.users.UsersFile``)."""

    def aor_for(self, username: str, realm: str) -> str | None:
        """The AOR this user may register and call as, or None."""


class Outcome(enum.Enum):
    """What to answer a request after looking at its credentials."""

    #: Credentials for the AOR, with the right password: go on.
    AUTHORIZED = "authorized"
    #: No credentials for our realm we can use: challenge (401 or 407).
    CHALLENGE = "challenge"
    #: The right password with an expired or replayed nonce: challenge, ``stale=TRUE``.
    STALE = "stale"
    #: Wrong password, unknown user, or a user who does not own the AOR: 403.
    FORBIDDEN = "forbidden"
    #: Too many wrong passwords lately: 403 without checking this one.
    THROTTLED = "throttled"
    #: Credentials that do not parse, or name another URI: 400.
    MALFORMED = "malformed"


@frozen
class Judgement:
    """An :class:`Outcome`, with what the response or the caller needs of it."""

    outcome: Outcome
    #: For MALFORMED: what was wrong, for the reason phrase.
    reason: str = ""
    #: For AUTHORIZED: the header value that carried the credentials (a
    #: proxy removes it before forwarding, RFC 3261 s22.3).
    accepted: str | None = None
    #: For AUTHORIZED: the Digest user name.
    username: str | None = None


def digest_uri_for(credentials_uri: str, request_uri: URI) -> str:
    """
    The Request-URI as the client spelled it, when its digest-uri names it.

    Clients hash the URI as they wrote it; ours is re-serialised, so compare
    the parsed forms (RFC 3261 s19.1.4) and hand back the client's text.
    """
    try:
        if parse_uri(credentials_uri) == request_uri:
            return credentials_uri
    except SipParseError:
        pass
    return str(request_uri)


class CredentialCheck:
    """
    Digest credentials judged against one realm's users, with the login throttle.

    One instance serves the registrar and the proxy of a super-node, so a
    password guesser is counted the same whichever of them it tries.
    """

    log = Logger()

    def __init__(
        self,
        authenticator: DigestAuthenticator,
        accounts: AccountDirectory,
        throttle: LoginThrottle,
        clock: IReactorTime,
    ) -> None:
        self.authenticator = authenticator
        self.accounts = accounts
        self.throttle = throttle
        self._throttle_log = LogThrottle(clock)

    @property
    def realm(self) -> str:
        return self.authenticator.realm

    def challenges(
        self, stale: bool = False, *, aor: str | None = None, user_agent: str | None = None
    ) -> list[str]:
        """
        Challenge header values (``WWW-Authenticate`` or ``Proxy-Authenticate``),
        preferred first, with the algorithms offered to ``aor``'s user and that client.
        """
        return self.authenticator.challenges(stale=stale, aor=aor, user_agent=user_agent)

    def judge(
        self,
        values: Sequence[str],
        method: str,
        request_uri: URI,
        aor: str,
        source: str | None,
        what: str,
    ) -> Judgement:
        """
        Judge the credential header ``values`` of a ``method`` request to
        ``request_uri`` that speaks for ``aor``, from address ``source``.

        ``what`` names the request in the throttle warning (``REGISTER``,
        ``INVITE``).  Values for other realms are skipped (they belong to
        other servers); the first one for ours decides.
        """
        for value in values:
            try:
                credentials = parse_authorization(value)
            except DigestParseError as e:
                return Judgement(Outcome.MALFORMED, f"malformed credentials: {e}")
            if credentials.realm != self.realm:
                continue
            if self.throttle.blocked(source, aor):
                # Too many wrong passwords lately: this guess is not even
                # checked, and gets the answer a wrong one gets.
                self._note_throttled(source, what)
                return Judgement(Outcome.THROTTLED)
            verdict = self.authenticator.verify(
                credentials, method, digest_uri_for(credentials.uri, request_uri)
            )
            if verdict is Verdict.ACCEPTED:
                if self.accounts.aor_for(credentials.username, credentials.realm) != aor:
                    self.throttle.failed(source, aor)
                    return Judgement(Outcome.FORBIDDEN)
                return Judgement(Outcome.AUTHORIZED, accepted=value, username=credentials.username)
            if verdict is Verdict.STALE:
                return Judgement(Outcome.STALE)
            if verdict is Verdict.REJECTED:
                self.throttle.failed(source, aor)
                return Judgement(Outcome.FORBIDDEN)
            if verdict is Verdict.MALFORMED:
                return Judgement(Outcome.MALFORMED, "digest uri or nonce count")
        return Judgement(Outcome.CHALLENGE)

    def _note_throttled(self, source: str | None, what: str) -> None:
        """Warn about refused guesses at most once a minute per source, with how many there were."""
        blurred = blur_flow((source,)) if source else "?"
        held_back = self._throttle_log.admit(blurred)
        if held_back is None:
            return
        self.log.warn(
            "{what}: {count} login(s) from {source} refused unchecked after too many wrong "
            "passwords (limits: {per_source} per source, {per_user} per user, a minute)",
            what=what,
            count=held_back + 1,
            source=blurred,
            per_source=self.throttle.failures_per_source,
            per_user=self.throttle.failures_per_user,
        )
