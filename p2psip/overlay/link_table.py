"""
The links a node holds, by the Node-ID at their far end.

A TLS link arrives identified: its handshake proved the Node-ID at the
other end (:mod:`p2psip.overlay.tls`), and it is filed under that Node-ID
at once.  A link without TLS (in-memory, in tests) is *unidentified* until
a message arrives on it whose signature names its sender with an empty via
list (only the link's other end can send that); it is then filed under
that Node-ID.  Either way a link is identified once: a later message that
claims another Node-ID does not move it.  A peer can have
several links for a while: both sides connected at once, or the peer
restarted and connected again before its old link was found dead.  The
one that last carried something from the peer is the one to use.

A link is *confirmed* when the peer proved it is at the other end: it
answered a challenge of ours (a Ping with a transaction id we chose, sent
over that link), or TLS authenticated it.  A link identified by a request
alone is not: a signed request can be a copy, sent by whoever received
it.  Until confirmed, such a link is used for a peer only when the peer
has no confirmed link.

This is bookkeeping only: opening links, hellos and keepalives are
:mod:`p2psip.overlay.connectivity`'s job, routing is
:mod:`p2psip.overlay.messaging`'s.
"""

from __future__ import annotations

from p2psip.overlay.links import Link


class LinkTable:
    """Open links by peer, plus the ones not identified yet."""

    def __init__(self) -> None:
        self._by_peer: dict[int, list[Link]] = {}
        self._unidentified: set[Link] = set()
        self._unconfirmed: set[Link] = set()

    def added(self, link: Link) -> None:
        """A connection is up: filed (confirmed) under its peer when TLS proved it, else unidentified."""
        if link.peer_id is not None:
            self._by_peer.setdefault(link.peer_id, []).append(link)
        else:
            self._unidentified.add(link)

    def identify(self, link: Link, peer: int, confirmed: bool = True) -> bool:
        """
        File ``link`` under ``peer`` (its verified sender); links are identified once.

        ``confirmed`` is False when only a request's signature names the
        peer (see the module docstring); :meth:`confirm` settles it later.
        Returns False, and changes nothing, when the link already belongs to
        another peer (its certificate, or an earlier message, named it).
        """
        if link.peer_id is not None:
            return link.peer_id == peer
        link.peer_id = peer
        self._unidentified.discard(link)
        self._by_peer.setdefault(peer, []).append(link)
        if not confirmed:
            self._unconfirmed.add(link)
        return True

    def confirm(self, link: Link) -> None:
        """The peer answered our challenge over ``link``: it is at the other end."""
        self._unconfirmed.discard(link)

    def is_confirmed(self, link: Link) -> bool:
        return link.peer_id is not None and link not in self._unconfirmed

    def link_for(self, peer: int) -> Link | None:
        """The open link to ``peer`` that last carried something from it, confirmed ones first."""
        best: Link | None = None
        for link in self._by_peer.get(peer, ()):
            if link.closed:
                continue
            if best is None or (link not in self._unconfirmed, link.last_received_at) > (
                best not in self._unconfirmed,
                best.last_received_at,
            ):
                best = link
        return best

    def has_link(self, peer: int) -> bool:
        return self.link_for(peer) is not None

    def links_to(self, peer: int) -> list[Link]:
        """Every link filed under ``peer``, open or closing."""
        return list(self._by_peer.get(peer, ()))

    def peers(self) -> list[int]:
        """Peers we hold at least one identified link to."""
        return list(self._by_peer)

    def all_links(self) -> list[Link]:
        every = [link for links in self._by_peer.values() for link in links]
        return every + list(self._unidentified)

    def unidentified(self) -> list[Link]:
        return list(self._unidentified)

    def remove(self, link: Link) -> None:
        """Forget ``link`` (without closing it): it no longer counts for its peer."""
        self._unidentified.discard(link)
        self._unconfirmed.discard(link)
        peer = link.peer_id
        if peer is None:
            return
        links = self._by_peer.get(peer)
        if links is not None and link in links:
            links.remove(link)
            if not links:
                del self._by_peer[peer]

    def lost(self, link: Link) -> bool:
        """
        A link closed under us.  True when it was the last link of a peer
        we had filed it under; False when it was unidentified, or already
        removed on purpose (see :meth:`remove`), or the peer has others.
        """
        self._unidentified.discard(link)
        self._unconfirmed.discard(link)
        peer = link.peer_id
        if peer is None:
            return False
        links = self._by_peer.get(peer)
        if links is None or link not in links:
            return False
        links.remove(link)
        if links:
            return False
        del self._by_peer[peer]
        return True

    def __len__(self) -> int:
        return len(self.all_links())
