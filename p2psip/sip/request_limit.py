"""
How many new SIP requests one source address may send per second.

A super-node answers every request it is sent, and some (an INVITE: an
overlay lookup, a fork) cost far more than the packet that asked.  One
source sending thousands a second would use up the node for everyone, so
new requests (new server transactions: retransmissions are absorbed by the
transaction layer before they get here) take a token from their source
address's bucket (:class:`p2psip.util.token_bucket.TokenBuckets`); a
source whose bucket is empty is answered 503 Service Unavailable with
``Retry-After`` (RFC 3261 s21.5.4), which tells a well-behaved client to
back off and costs us one small response.

ACKs are never limited: an ACK to a 2xx has no response to carry the 503,
and dropping it would leave the callee retransmitting its 200.

Other super-nodes of the ring are not limited: one of them forwards the
calls of all its phones, so its rate is theirs together.  Once the proxy
has checked that a request came from a ring member (its Record-Route and
source address, through the overlay), that address is exempt for
``MEMBER_SECONDS`` (:meth:`RequestRateLimit.trust`).

The key is the IP address only, not the port: a flood needs no new port to
be one source.  A NAT with many phones behind one address is one source
too, which is why the operator can raise the limit (``--sip-rate-limit``,
``--sip-rate-burst``) or switch it off (``--sip-rate-limit 0``), as a
benchmark driving a super-node from one SIPp must.  Sans-IO: only the
clock's ``seconds()`` is read.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from p2psip.util.token_bucket import TokenBuckets

#: New requests per second one source address may send by default.
DEFAULT_REQUESTS_PER_SECOND = 50.0
#: How many above the rate it may send at once (a phone's burst at start-up
#: is a handful: REGISTER, SUBSCRIBEs, an OPTIONS).
DEFAULT_BURST = 100
#: Source addresses remembered at once.
MAX_SOURCES = 10_000
#: How long an address checked to be a super-node of the ring stays exempt.
MEMBER_SECONDS = 600.0
#: Such addresses remembered at once (a ring's super-nodes, with room to spare).
MAX_MEMBERS = 1024


class RequestRateLimit:
    """
    New requests per source address, as a token bucket per address.

    :param requests_per_second: the sustained rate each source may send.
    :param burst: how many requests a source that was quiet may send at once.
    """

    def __init__(
        self,
        clock: IReactorTime,
        requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND,
        burst: int = DEFAULT_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.clock = clock
        self.requests_per_second = requests_per_second
        self.burst = burst
        self._buckets = TokenBuckets(requests_per_second, burst, max_sources)
        #: Addresses of ring members, with when they were last checked.
        self._members: OrderedDict[str, float] = OrderedDict()
        #: Requests refused since start.
        self.refused = 0

    def trust(self, source: str) -> None:
        """``source`` was just found to be a super-node of the ring: exempt it for a while."""
        self._members[source] = self.clock.seconds()
        self._members.move_to_end(source)
        while len(self._members) > MAX_MEMBERS:
            self._members.popitem(last=False)

    def _is_member(self, source: str, now: float) -> bool:
        checked = self._members.get(source)
        if checked is None:
            return False
        if now - checked > MEMBER_SECONDS:
            del self._members[source]
            return False
        return True

    def admit(self, source: str) -> int | None:
        """
        None when a new request from ``source`` may be served; otherwise the
        whole seconds (at least 1) to put in ``Retry-After``.
        """
        now = self.clock.seconds()
        if self._is_member(source, now) or self._buckets.take(source, now):
            return None
        self.refused += 1
        return max(1, math.ceil(self._buckets.seconds_until_token(source, now)))

    def tracked(self) -> int:
        """Sources with a bucket that is not full (for status pages)."""
        return len(self._buckets)
