"""
The clients attached to this peer (RFC 6940 s3.2.1, s6.1): the peer side
of client mode.

A client is not in the ring: it holds no range, stores nothing for others
and appears in nobody's neighbour or finger table.  It keeps one link, to
its *attachment peer*, and sends everything through it; the attachment
peer delivers over that link the messages addressed to the client's
Node-ID.

A client announces itself with an Attach addressed to its attachment peer,
sent over its direct link with an empty via list, that offers no
candidate: it has no listener anyone could connect to, it is reached over
this link only (``docs/overlay.md``, "Clients").  The link must be
confirmed (TLS proved who is at the other end, or the peer answered our
challenge over it), and the Node-ID must not be a ring member we know.
This table is the bookkeeping: Node-ID to link, bounded, forgotten when
the link goes.  Sans-IO.
"""

from __future__ import annotations

from p2psip.overlay.links import Link

#: Clients one peer serves at once; more are refused (Error_Forbidden) so
#: that a flood of client attachments cannot exhaust a super-node.
MAX_ATTACHED_CLIENTS = 1000


class TooManyClients(Exception):
    """The table is full."""


class AttachedClients:
    """Node-ID -> the link of a client attached to us."""

    def __init__(self, limit: int = MAX_ATTACHED_CLIENTS) -> None:
        self.limit = limit
        self._links: dict[int, Link] = {}

    def attach(self, client: int, link: Link) -> bool:
        """
        Serve ``client`` over ``link`` from now on; True when it is new.

        A client that re-attaches over a new link (it reconnected) replaces
        its old one.

        :raises TooManyClients: the table is full.
        """
        known = client in self._links
        if not known and len(self._links) >= self.limit:
            raise TooManyClients(f"this peer serves {self.limit} clients already")
        self._links[client] = link
        return not known

    def link_for(self, client: int) -> Link | None:
        """The open link of an attached client, if ``client`` is one."""
        link = self._links.get(client)
        if link is None or link.closed:
            return None
        return link

    def is_client_link(self, link: Link) -> bool:
        return link.peer_id is not None and self._links.get(link.peer_id) is link

    def lost(self, link: Link) -> bool:
        """Forget the client of a closed ``link``; True when it was one."""
        if not self.is_client_link(link):
            return False
        assert link.peer_id is not None
        del self._links[link.peer_id]
        return True

    def detach(self, client: int) -> None:
        self._links.pop(client, None)

    def clients(self) -> list[int]:
        return sorted(self._links)

    def __len__(self) -> int:
        return len(self._links)

    def __contains__(self, client: object) -> bool:
        return client in self._links
