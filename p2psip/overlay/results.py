"""What overlay operations report: put, get and lookup to their callers, hand-overs to the node."""

from __future__ import annotations

from typing import Any

from attrs import define, frozen

from p2psip.util.ids import id_hex


@frozen
class OperationResult:
    """
    The outcome of one overlay operation: the peer that answered for the
    Resource-ID, the route there (our Node-ID first), and for a put the
    replicas that took the value.
    """

    resource_id: int
    responsible: int
    route: tuple[int, ...]
    found: bool = True
    value: bytes | None = None
    replicas: tuple[int, ...] = ()

    @property
    def hops(self) -> int:
        return len(self.route) - 1

    def as_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "resource_id": id_hex(self.resource_id),
            "responsible": id_hex(self.responsible),
            "stored_at": id_hex(self.responsible),
            "route": [id_hex(hop) for hop in self.route],
            "hops": self.hops,
            "found": self.found,
            "replicas": [id_hex(peer) for peer in self.replicas],
        }
        if self.value is not None:
            result["value"] = self.value.decode("utf-8", "replace")
        return result


@define
class HandOver:
    """How a hand-over went: resources the peer refused, and ones it never answered for."""

    refused: int = 0
    unreachable: int = 0
    reason: str = ""
