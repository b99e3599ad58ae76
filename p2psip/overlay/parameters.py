"""The sizes and timers of the ring, as one frozen value every part of a node reads."""

from __future__ import annotations

from attrs import field, frozen

from p2psip.overlay.codec import Limits
from p2psip.overlay.replay import DEFAULT_CAPACITY, DEFAULT_WINDOW_SECONDS


@frozen
class OverlayConfig:
    """Sizes and timers of the ring (RFC 6940 defaults where it gives them)."""

    overlay_name: str = "p2psip.test"
    successors: int = 4
    predecessors: int = 4
    replicas: int = 2
    update_interval_seconds: float = 60.0
    ping_interval_seconds: float = 15.0
    request_timeout_seconds: float = 15.0
    join_timeout_seconds: float = 60.0
    idle_link_seconds: float = 120.0
    failed_peer_memory_seconds: float = 60.0
    #: A link whose peer has left a message unacknowledged this long, and
    #: sent nothing at all meanwhile, is closed and the peer reported
    #: failed: it is dead.  A live peer acknowledges every frame as it
    #: reads it; a busy one may be slow to, but goes on sending.
    link_ack_timeout_seconds: float = 5.0
    #: The same, for a peer someone else has already found silent: a
    #: neighbour's Update skips it, or an answer came from beyond it.  We
    #: ping it then, and close its link if the Ping is not acknowledged
    #: this soon.  Two signs make a false alarm unlikely, and under churn
    #: every peer between a lookup and a dead owner otherwise waits the
    #: full ack timeout in turn.
    suspect_ack_timeout_seconds: float = 1.5
    initial_ttl: int = 100
    limits: Limits = field(factory=Limits)
    #: How far a request's transaction-ID time may lie from our clock; the
    #: ring's clocks must agree within it (see p2psip.overlay.replay).
    replay_window_seconds: float = DEFAULT_WINDOW_SECONDS
    #: Transaction IDs remembered to refuse replays (bounded memory).
    replay_memory: int = DEFAULT_CAPACITY
    #: Requests one link may bring us per second (handled or forwarded),
    #: and in a burst; over it they are dropped unread.  0 turns it off.
    #: Generous: a neighbour forwards much of the ring's traffic to us.
    requests_per_link_per_second: float = 6000.0
    request_burst_per_link: float = 30000.0
    #: Requests of one signer we handle per second, and in a burst (a
    #: join's hand-over comes at once); over it they are answered with
    #: Error_Forbidden.  0 turns it off.  In a ring of three super-nodes
    #: taking 2500 REGISTERs/s at one of them (bench/sip_ring_load.py),
    #: each other node handles about 1700 Stores/s signed by that one.
    requests_per_signer_per_second: float = 3000.0
    request_burst_per_signer: float = 15000.0
    #: Registrations (SIP-REGISTRATION values, and as many user
    #: certificates) one Node-ID may have stored at this peer: a super-node
    #: signs those of every phone it serves, so this bounds the phones one
    #: super-node can serve in a small ring (in a ring of N peers holding
    #: three copies, about N / 3 times this), and what a rogue peer can
    #: make this one hold (about 2 KiB each).
    registrations_per_signer: int = 10_000
