"""
The ring members a node knew, kept in its data directory.

A peer whose bootstrap peers are gone must still be able to come back
after a restart: it keeps the Node-IDs and overlay addresses of its
neighbours and fingers in ``known-peers.json`` and, when the ``--bootstrap``
peers do not answer, joins through any of them (RFC 6940 s11.4 lets a node
cache the peers it learned for the next start).

The file is JSON, small and human-readable::

    {"version": 1, "peers": [{"node_id": "<32 hex digits>", "host": "192.0.2.7", "port": 6084}]}

A missing file is an empty list; an unreadable or corrupt one is logged
with its path and ignored (the next save replaces it), because a peer
that cannot read its cache can still join through its bootstrap peers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from attrs import frozen
from twisted.logger import Logger

from p2psip.util.endpoints import tcp_client_description
from p2psip.util.files import write_atomically
from p2psip.util.ids import id_hex, parse_id

FILE_NAME = "known-peers.json"
FORMAT_VERSION = 1
#: Enough to outlive the loss of a whole neighbourhood, small enough to try in turn.
MAX_KNOWN_PEERS = 16
#: A cache larger than this is not ours; refuse to parse it.
MAX_FILE_BYTES = 64 * 1024

log = Logger()


@frozen
class KnownPeer:
    """One ring member: its Node-ID and where its overlay listener was."""

    node_id: int
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        """The client endpoint string to join through it."""
        return tcp_client_description(self.host, self.port)


def encode(peers: Iterable[KnownPeer]) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "peers": [
            {"node_id": id_hex(peer.node_id), "host": peer.host, "port": peer.port}
            for peer in list(peers)[:MAX_KNOWN_PEERS]
        ],
    }
    # No indent: the json module's indenting encoder is pure Python and
    # leaves a reference cycle of closures behind each call (one save per
    # update interval, forever); the C encoder leaves none.
    return json.dumps(document).encode("utf-8") + b"\n"


def decode(data: bytes) -> list[KnownPeer]:
    """
    Parse the file's content.

    :raises ValueError: saying what is wrong with it.
    """
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    document: Any = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} known-peers document")
    entries = document.get("peers")
    if not isinstance(entries, list):
        raise ValueError("'peers' is not a list")
    peers = []
    for entry in entries[:MAX_KNOWN_PEERS]:
        if not isinstance(entry, dict):
            raise ValueError("a peer entry is not an object")
        node_id, host, port = entry.get("node_id"), entry.get("host"), entry.get("port")
        if not isinstance(node_id, str) or not isinstance(host, str) or not host:
            raise ValueError("a peer entry lacks its node_id or host")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port <= 65535:
            raise ValueError(f"peer {node_id} has no valid port")
        peers.append(KnownPeer(parse_id(node_id), host, port))
    return peers


def load(directory: str | Path) -> list[KnownPeer]:
    """The peers saved in ``directory``; [] when there is no usable file."""
    path = Path(directory) / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        log.warn(
            "cannot read the known-peers file {path}: {why}; joining through --bootstrap only "
            "(check the data directory's permissions)",
            path=str(path),
            why=e.strerror,
        )
        return []
    try:
        return decode(data)
    except (ValueError, UnicodeDecodeError) as e:
        log.warn(
            "ignoring the known-peers file {path}: {why}; it is rewritten once the node has joined",
            path=str(path),
            why=str(e),
        )
        return []


def save(directory: str | Path, peers: Iterable[KnownPeer]) -> None:
    """Replace the saved list; raises :class:`p2psip.util.files.DataFileError` naming the path."""
    write_atomically(Path(directory) / FILE_NAME, encode(peers), 0o644)
