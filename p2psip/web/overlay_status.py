"""
The overlay part of a ring role's ``/status`` document.

What an operator reads to see what a node is doing: whether it runs
``--insecure`` (first, so it cannot be missed), its place in the
ring (state, neighbours with their addresses and whether a link is up,
fingers), what it stores, its links (direction, how each was made, round
trip), outstanding requests and event counters.  Built from the node's
public read-only methods, so the node itself knows nothing of JSON.
"""

from __future__ import annotations

from typing import Any

from p2psip.overlay.node import OverlayNode
from p2psip.util.ids import id_hex


def overlay_status(node: OverlayNode) -> dict[str, Any]:
    """The JSON-ready status of ``node``."""

    def peer(peer_id: int) -> dict[str, Any]:
        address = node.peer_address(peer_id)
        return {
            "node_id": id_hex(peer_id),
            "address": f"{address[0]}:{address[1]}" if address else None,
            "linked": node.has_link(peer_id),
        }

    topology = node.topology
    return {
        # True under --insecure (self-signed certificates, no CA): the page
        # shows a banner, and whoever reads the JSON should notice too.
        "insecure": node.certificates.trust.insecure,
        "node_id": id_hex(node.node_id),
        "overlay": node.config.overlay_name,
        "state": node.state.value,
        "address": f"{node.advertised_host}:{node.advertised_port}",
        "uptime_seconds": round(node.uptime_seconds(), 3),
        "predecessors": [peer(p) for p in topology.predecessors],
        "successors": [peer(p) for p in topology.successors],
        "fingers": {
            str(index): id_hex(p) for index, p in sorted(topology.fingers.items(), reverse=True)
        },
        "storage": {
            "resources": node.stored_resource_count(),
            "values_per_kind": node.stored_values_per_kind(),
        },
        # Clients attached to this peer (RFC 6940 s3.2.1): not ring members.
        "clients": [id_hex(client) for client in node.attached_clients()],
        "connections": [link.describe() for link in node.all_links()],
        "pending_transactions": node.pending_request_count(),
        # The bounded structures that fill with use, against their caps:
        # a soak tells warm-up (filling) from growth (a cap would be passed).
        "bounded": {
            "certificates": {
                "entries": len(node.certificates),
                "max_entries": node.certificates.max_certificates,
            },
            "replay_window": {
                "entries": len(node.messenger.replays),
                "max_entries": node.messenger.replays.capacity,
            },
        },
        "counters": dict(sorted(node.counters.items())),
    }
