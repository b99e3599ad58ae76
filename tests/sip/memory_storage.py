"""An in-memory IOverlayStorage for SIP unit tests (the real one is the overlay's)."""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from p2psip.interfaces import IOverlayStorage


class StorageUnavailable(Exception):
    """What the fake fails with when told the overlay is down."""


class WrongSigner(Exception):
    """The fake's stand-in for Error_Forbidden: an entry not signed by its user's credential."""


@frozen
class MemoryCredential:
    """What the fake hands out as a user's credential: the user name it signs for."""

    user_name: str


@implementer(IOverlayStorage)
class MemoryOverlayStorage:
    """
    Dictionary kinds in a dict, with lifetimes on a fake clock.

    Several instances may share one ``entries`` dict to stand for several
    nodes of the same ring; ``applications`` answers resolve_application.
    ``users`` are the user names the node holds credentials for (None: every
    user, as an insecure ring makes them); as the overlay's policy does, a
    put or remove must be signed with the credential of the user the
    resource is named after.
    """

    def __init__(
        self,
        local_node_id: int,
        clock: IReactorTime,
        entries: dict[tuple[str, int], dict[bytes, tuple[bytes, float]]] | None = None,
        applications: dict[tuple[int, int], tuple[str, int]] | None = None,
        users: set[str] | None = None,
    ) -> None:
        self.local_node_id = local_node_id
        self.users = users
        self.clock = clock
        self.entries = {} if entries is None else entries
        self.applications = {} if applications is None else applications
        self.calls: list[tuple[object, ...]] = []
        self.available = True

    def user_credential(self, user_name: str) -> MemoryCredential | None:
        if self.users is not None and user_name not in self.users:
            return None
        return MemoryCredential(user_name)

    def _signed_for(self, resource_name: str, signer: object) -> bool:
        return isinstance(signer, MemoryCredential) and signer.user_name == resource_name

    def put_dictionary_entry(
        self,
        resource_name: str,
        kind_id: int,
        key: bytes,
        value: bytes,
        lifetime_seconds: int,
        signer: object = None,
    ) -> Deferred[None]:
        self.calls.append(("put", resource_name, kind_id, key, lifetime_seconds))
        if not self.available:
            return fail(StorageUnavailable("overlay down"))
        if not self._signed_for(resource_name, signer):
            return fail(WrongSigner(f"{resource_name} signed by {signer!r}"))
        expiry = self.clock.seconds() + lifetime_seconds
        self.entries.setdefault((resource_name, kind_id), {})[key] = (value, expiry)
        return succeed(None)

    def remove_dictionary_entry(
        self, resource_name: str, kind_id: int, key: bytes, signer: object = None
    ) -> Deferred[None]:
        self.calls.append(("remove", resource_name, kind_id, key))
        if not self.available:
            return fail(StorageUnavailable("overlay down"))
        if not self._signed_for(resource_name, signer):
            return fail(WrongSigner(f"{resource_name} signed by {signer!r}"))
        self.entries.get((resource_name, kind_id), {}).pop(key, None)
        return succeed(None)

    def get_dictionary(self, resource_name: str, kind_id: int) -> Deferred[dict[bytes, bytes]]:
        self.calls.append(("get", resource_name, kind_id))
        if not self.available:
            return fail(StorageUnavailable("overlay down"))
        now = self.clock.seconds()
        stored = self.entries.get((resource_name, kind_id), {})
        return succeed({key: value for key, (value, expiry) in stored.items() if expiry > now})

    def resolve_application(self, node_id: int, application: int) -> Deferred[tuple[str, int]]:
        self.calls.append(("resolve", node_id, application))
        address = self.applications.get((node_id, application))
        if address is None or not self.available:
            return fail(StorageUnavailable(f"node {node_id:x} unreachable"))
        return succeed(address)
