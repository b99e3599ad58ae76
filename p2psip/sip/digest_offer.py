"""
Which Digest algorithms a challenge offers, and which a response may use.

The default is MD5 alone.  RFC 8760 would put SHA-256 first, but real
phones break on it: baresip 1.0 (Debian 12) aborts its REGISTER on any
SHA-256 challenge, first or second ("Function not implemented"), and SIPp
and many older phones read only the first challenge.  MD5 alone registers
every one of them.  SHA-256 is offered where it is known to work:

* **per user**: a users-file line may carry ``offer=SHA-256,MD5`` (or
  ``offer=SHA-256``), set with ``p2psip users add --offer``.  That user's
  challenges list exactly those, and a response with any other algorithm is
  refused for that user, so a user whose phones all speak SHA-256 can
  switch MD5 off.  An algorithm the line holds no HA1 for is never offered;
* **per client**: ``sip-digest-client = Linphone=SHA-256,MD5`` offers that
  list to requests whose User-Agent contains ``Linphone`` (case-insensitive).
  The User-Agent is the client's claim, so this only chooses what is
  *offered*: a client that lies gets a challenge it may fail, never a
  weaker check.

Responses are accepted with any algorithm the server offers anyone (the
default list and the client rules), unless the user's own ``offer`` says
otherwise: both algorithms are checked with the same care, and a phone
that answers the second challenge of two is not refused for it.

Sans-IO: :class:`DigestOffer` is handed the user's offer through
:class:`UserOffers` (the users file) and the User-Agent text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from attrs import frozen

#: The algorithms this stack can check, strongest first.
KNOWN_ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")
#: What challenges offer unless a user or client rule says otherwise.
DEFAULT_ALGORITHMS: tuple[str, ...] = ("MD5",)


def parse_algorithms(text: str) -> tuple[str, ...]:
    """
    ``SHA-256,MD5`` as a tuple, preferred first, upper case.

    :raises ValueError: for an empty list, an unknown name or a repeat.
    """
    names = [name.strip().upper() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_ALGORITHMS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            f"{text!r} is not a list of Digest algorithms: write some of "
            f"{', '.join(KNOWN_ALGORITHMS)} separated by commas, preferred first"
        )
    return tuple(names)


@frozen
class ClientRule:
    """Offer ``algorithms`` to requests whose User-Agent contains ``user_agent`` (any case)."""

    user_agent: str
    algorithms: tuple[str, ...]


def parse_client_rule(text: str) -> ClientRule:
    """
    ``USER-AGENT-TEXT=ALGORITHMS`` (the ``sip-digest-client`` option), e.g. ``Linphone=SHA-256,MD5``.

    :raises ValueError: naming what is wrong.
    """
    agent, equals, algorithms = text.rpartition("=")
    agent = agent.strip()
    if not equals or not agent:
        raise ValueError(f"{text!r}: write USER-AGENT-TEXT=ALGORITHMS, e.g. Linphone=SHA-256,MD5")
    return ClientRule(agent, parse_algorithms(algorithms))


class UserOffers(Protocol):
    """A user's own offer, from the users file (``p2psip.sip.users.UsersFile``)."""

    def offer_for_aor(self, aor: str) -> tuple[str, ...] | None:
        """The algorithms this AOR's user is offered, or None for the server's choice."""

    def offer_for_user(self, username: str, realm: str) -> tuple[str, ...] | None:
        """The same for a Digest user name in ``realm``."""


@frozen
class DigestOffer:
    """The server's default list and its client rules."""

    default: tuple[str, ...] = DEFAULT_ALGORITHMS
    clients: tuple[ClientRule, ...] = ()

    def __attrs_post_init__(self) -> None:
        for algorithms in (self.default, *(rule.algorithms for rule in self.clients)):
            unknown = [name for name in algorithms if name not in KNOWN_ALGORITHMS]
            if unknown or not algorithms:
                raise ValueError(
                    f"digest algorithms must be some of {', '.join(KNOWN_ALGORITHMS)}, not {unknown}"
                )

    @property
    def anyone_may_use(self) -> frozenset[str]:
        """Every algorithm offered to somebody: what a response may use for a user without an offer."""
        return frozenset(
            [*self.default, *(name for rule in self.clients for name in rule.algorithms)]
        )

    def for_client(self, user_agent: str | None) -> tuple[str, ...]:
        """The first client rule's list whose text the User-Agent contains, else the default."""
        if user_agent:
            lowered = user_agent.lower()
            for rule in self.clients:
                if rule.user_agent.lower() in lowered:
                    return rule.algorithms
        return self.default

    def offered(
        self, users: UserOffers | None, aor: str | None, user_agent: str | None
    ) -> tuple[str, ...]:
        """What a challenge to ``aor``'s user, from this client, lists: the user's offer first."""
        if users is not None and aor is not None:
            own = users.offer_for_aor(aor)
            if own:
                return own
        return self.for_client(user_agent)

    def accepted(self, users: UserOffers | None, username: str, realm: str) -> Sequence[str]:
        """The algorithms a response for this Digest user may use."""
        if users is not None:
            own = users.offer_for_user(username, realm)
            if own:
                return own
        return tuple(name for name in KNOWN_ALGORITHMS if name in self.anyone_may_use)


__all__ = [
    "ClientRule",
    "DEFAULT_ALGORITHMS",
    "DigestOffer",
    "KNOWN_ALGORITHMS",
    "UserOffers",
    "parse_algorithms",
    "parse_client_rule",
]
