"""
The registrar: REGISTER processing per RFC 3261 section 10.3, on the overlay.

A super-node accepts REGISTER for AORs of the overlay domain, checks Digest
credentials (RFC 3261 section 22, :mod:`p2psip.sip.digest`), keeps the
bindings it serves in a local table together with the *flow* each REGISTER
arrived on (the transport source or connection, so that requests can later
reach a user agent behind NAT over the same path, as RFC 5626 does), and
publishes them in the overlay as one SIP-REGISTRATION entry per AOR
(:mod:`p2psip.sip.location`), whose lifetime is the longest binding's.

Answers, in the order of section 10.3's steps:

- Request-URI not ``sip[s]:<overlay domain>``: 404; ``Require``: 420.
- No usable credentials: 401 with one challenge per algorithm; wrong
  password or unknown user: 403 (the same for both, so nobody learns which
  users exist; a fresh 401 would also be allowed, but 403 stops phones from
  retrying a wrong stored password in a loop); digest-uri unlike the Request-URI: 400; stale nonce: 401
  with ``stale=TRUE``.  An authenticated user may register only the AOR
  the users file gives it (otherwise 403).
- ``Contact: *`` needs ``Expires: 0`` and no other contact (else 400).
- An expiry below the minimum: 423 with ``Min-Expires``; above the
  maximum: shortened.
- A REGISTER older than the binding it would change (same Call-ID, CSeq
  not higher): 400.
- Overlay store failed: 503 with ``Retry-After``.
- This super-node holds no overlay credential for the user (it must sign
  the registration with a certificate naming the user): 403 with a
  ``Warning``; the location service tells the operator how to enrol the user.
- Otherwise 200 listing every binding this super-node holds for the AOR,
  each with its remaining ``expires``.

Authentication can be switched off only explicitly (``trusted_network``),
for a closed network where every client is trusted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

from attrs import define, frozen
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from p2psip.sip.authorization import AccountDirectory, CredentialCheck, Outcome
from p2psip.util.logs import Logger

__all__ = ["AccountDirectory", "LocalBinding", "Registrar", "blur_aor", "blur_flow", "flow_host"]
from p2psip.sip.blur import blur_aor, blur_flow, flow_host
from p2psip.sip.coalesce import BatchFull, KeyedBatcher
from p2psip.sip.digest import DigestAuthenticator
from p2psip.sip.direct_contacts import DirectContacts
from p2psip.sip.errors import SipParseError
from p2psip.sip.location import Binding, NoUserCredential, OverlayLocationService, format_q
from p2psip.sip.login_throttle import LoginThrottle
from p2psip.sip.message import NameAddress, Request, Response, make_response
from p2psip.sip.outbound import (
    FLOW_TIMER_SECONDS,
    OPTION_TAG,
    instance_of,
    reg_id_of,
    supports_outbound,
)
from p2psip.sip.uri import URI, SipURI

#: Defaults for registration intervals (RFC 3261 s10.2.1.1 suggests 3600).
DEFAULT_EXPIRES_SECONDS = 3600
MIN_EXPIRES_SECONDS = 60
MAX_EXPIRES_SECONDS = 86400
#: How long a client should wait after the overlay failed to store.
OVERLAY_RETRY_AFTER_SECONDS = 5
#: A REGISTER may carry at most this many contacts (a flood guard).
MAX_CONTACTS_PER_REGISTER = 16
#: At most this many contacts per AOR on one super-node.  Each is a branch of
#: every call to the AOR, and an unanswered UDP branch is sent 7 times
#: (Timer A), so this bounds what one registered user can aim at a third host.
MAX_BINDINGS_PER_AOR = 5


@define
class LocalBinding:
    """
    One binding this super-node serves, with what only it knows.

    ``flow`` is the transport's opaque description of where the REGISTER
    came from (source address and transport, or the connection), and
    ``registered_from`` the REGISTER's top Via sent-by.
    """

    aor: str
    contact: NameAddress
    expires_at: float
    q: float
    call_id: str
    cseq: int
    flow: object
    registered_from: tuple[str, int] | None = None
    #: SIP Outbound (RFC 5626, :mod:`p2psip.sip.outbound`): the UA instance
    #: and the registration id of this flow, both or neither.
    instance: str | None = None
    reg_id: int | None = None

    @property
    def outbound(self) -> bool:
        """Whether this binding was registered with SIP Outbound (reached over its flow only)."""
        return self.reg_id is not None and self.instance is not None

    @property
    def contact_uri(self) -> URI:
        return self.contact.uri

    @property
    def reached_over_flow(self) -> bool:
        """
        Whether requests for this contact should go back over ``flow``.

        Only when the contact names the registering UA itself (its address
        is the REGISTER's Via sent-by), and then over a connection (TCP,
        TLS: reuse it) or over UDP from another IP address than the UA
        believes it has (a NAT: the flow is the path through it).  A UA on
        its own address that merely sends from another port, and a contact
        registered for another device (third-party registration), are sent
        to directly.
        """
        if self.outbound:
            return True  # RFC 5626 s5.3: requests go over the registration's flow
        uri = self.contact.uri
        if not isinstance(uri, SipURI) or self.registered_from is None:
            return False
        port = uri.port or (5061 if uri.scheme == "sips" else 5060)
        if (uri.host.lower().strip("[]"), port) != self.registered_from:
            return False
        transport = getattr(self.flow, "transport", None)
        host = getattr(self.flow, "host", None)
        if transport is None or host is None or str(transport).upper() != "UDP":
            return True
        return str(host).lower().strip("[]") != self.registered_from[0]

    def as_binding(self, node_id: int, direct_contacts: DirectContacts | None = None) -> Binding:
        """
        The overlay form of this binding, marked ``direct`` when
        ``direct_contacts`` lets callers' super-nodes reach it themselves.
        """
        transport = getattr(self.flow, "transport", None)
        host = getattr(self.flow, "host", None)
        direct = direct_contacts is not None and direct_contacts.reachable_directly(
            self.contact.uri,
            None if host is None else str(host),
            None if transport is None else str(transport),
            outbound=self.outbound,
        )
        return Binding(
            aor=self.aor,
            contact=str(self.contact.uri),
            expires_at=self.expires_at,
            q=self.q,
            node_id=node_id,
            instance=self.instance if self.outbound else None,
            reg_id=self.reg_id if self.outbound else None,
            direct=direct,
        )


@frozen
class _Pending:
    """A checked REGISTER waiting to be applied: what it asks and where it came from."""

    request: Request
    to: NameAddress
    flow: object
    requested: Sequence[tuple[NameAddress, int]]
    wildcard: bool


class _Refusal(Exception):
    """An error response, raised from deep inside REGISTER processing."""

    def __init__(
        self,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        quiet: bool = False,
    ) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        #: Not logged one by one (floods are summarised elsewhere).
        self.quiet = quiet


def _aor_of(to: NameAddress | None) -> str:
    """The To AOR, or ``?`` when there is none (for log lines)."""
    if to is None or not isinstance(to.uri, SipURI):
        return "?"
    return to.uri.address_of_record()


def _contact_key(uri: URI) -> str:
    """A lookup key equal for URIs that compare equal (host case, parameters aside)."""
    if isinstance(uri, SipURI):
        return f"{uri.scheme}:{uri.user}@{uri.host.lower()}:{uri.port}"
    return str(uri)


def _contact_address(uri: URI) -> tuple[str, int] | None:
    """The host and port a contact URI names (5060 when it names none)."""
    if not isinstance(uri, SipURI):
        return None
    default = 5061 if uri.scheme == "sips" else 5060
    return uri.host.lower().strip("[]"), uri.port or default


def _unindex(index: dict[Any, list[LocalBinding]], key: object, binding: LocalBinding) -> None:
    remaining = [b for b in index.get(key, []) if b is not binding]
    if remaining:
        index[key] = remaining
    else:
        index.pop(key, None)


class Registrar:
    """
    Answer REGISTER requests for one overlay domain.

    The transaction layer calls :meth:`register_received` for each new
    REGISTER server transaction and sends the Response the Deferred fires
    with.  :meth:`local_bindings` tells the proxy which contacts this node
    serves and over which flow.
    """

    log = Logger()

    def __init__(
        self,
        domain: str,
        location: OverlayLocationService,
        clock: IReactorTime,
        authenticator: DigestAuthenticator | None = None,
        accounts: AccountDirectory | None = None,
        *,
        trusted_network: bool = False,
        default_expires_seconds: int = DEFAULT_EXPIRES_SECONDS,
        min_expires_seconds: int = MIN_EXPIRES_SECONDS,
        max_expires_seconds: int = MAX_EXPIRES_SECONDS,
        random_bytes: Callable[[int], bytes] = os.urandom,
        throttle: LoginThrottle | None = None,
        direct_contacts: DirectContacts | None = None,
    ) -> None:
        if not trusted_network and (authenticator is None or accounts is None):
            raise ValueError(
                "the registrar needs a users file for Digest authentication (--users FILE); "
                "running without authentication must be asked for explicitly (trusted network)"
            )
        if not 0 < min_expires_seconds <= default_expires_seconds <= max_expires_seconds:
            raise ValueError("expiry limits must satisfy 0 < min <= default <= max")
        self.domain = domain.lower()
        self.location = location
        self.clock = clock
        self.authenticator = None if trusted_network else authenticator
        self.accounts = accounts
        self.default_expires_seconds = default_expires_seconds
        self.min_expires_seconds = min_expires_seconds
        self.max_expires_seconds = max_expires_seconds
        self._random_bytes = random_bytes
        #: Which bindings callers' super-nodes may reach without this one.
        self.direct_contacts = direct_contacts or DirectContacts()
        self._bindings: dict[str, list[LocalBinding]] = {}
        self._by_contact: dict[str, list[LocalBinding]] = {}
        #: (host, port) of each binding's contact -> the bindings there.
        self._by_address: dict[tuple[str, int], list[LocalBinding]] = {}
        self._expiry_calls: dict[str, IDelayedCall] = {}
        #: REGISTERs per AOR: one store in flight, the rest applied together next.
        self._batches: KeyedBatcher[str, _Pending, Response] = KeyedBatcher(self._apply_batch)
        #: Called with the AOR whenever its bindings change (registered,
        #: removed, expired, restored): the copy kept across restarts,
        #: p2psip.sip.binding_store, stages the AOR's row at once, so the
        #: work is spread over the REGISTERs instead of piling up per commit.
        self.change_observers: list[Callable[[str], None]] = []
        self.throttle = throttle or LoginThrottle(clock)
        #: The credential checks, shared with the proxy's 407 challenges
        #: (None with authentication off).
        self.credentials: CredentialCheck | None = None
        if self.authenticator is not None and accounts is not None:
            self.credentials = CredentialCheck(self.authenticator, accounts, self.throttle, clock)

    # -- queries for the proxy -------------------------------------------

    def local_bindings(self, aor: str) -> list[LocalBinding]:
        """The live bindings this node serves for ``aor``, best q first."""
        now = self.clock.seconds()
        live = [binding for binding in self._bindings.get(aor, []) if binding.expires_at > now]
        return sorted(live, key=lambda binding: -binding.q)

    def bindings_for_contact(self, uri: URI) -> list[LocalBinding]:
        """Live bindings whose contact is ``uri`` (to route in-dialog requests over the flow)."""
        now = self.clock.seconds()
        candidates = self._by_contact.get(_contact_key(uri), [])
        return [
            binding
            for binding in candidates
            if binding.expires_at > now and binding.contact.uri == uri
        ]

    def bindings_at(self, uri: URI) -> list[LocalBinding]:
        """
        Live bindings whose contact names the host and port ``uri`` names.

        A phone's dialog contact often differs from its registered one only
        in user part or parameters; the proxy uses this to recognise the
        phones it serves (and to refuse relaying to anything else).
        """
        address = _contact_address(uri)
        if address is None:
            return []
        now = self.clock.seconds()
        return [b for b in self._by_address.get(address, []) if b.expires_at > now]

    def bindings_on_connection(self, uri: URI) -> list[LocalBinding]:
        """
        Live bindings registered over a TCP or TLS connection whose far end
        is the host and port ``uri`` names.

        Some phones (baresip) put the local port of their connection in the
        Contact of a dialog, not the listening port they registered: the
        request is still for them, over that connection.
        """
        address = _contact_address(uri)
        if address is None:
            return []
        now = self.clock.seconds()
        return [
            binding
            for bindings in self._bindings.values()
            for binding in bindings
            if binding.expires_at > now
            and str(getattr(binding.flow, "transport", "")).upper() in ("TCP", "TLS")
            and (
                str(getattr(binding.flow, "host", "")).lower().strip("[]"),
                getattr(binding.flow, "port", None),
            )
            == address
        ]

    def served_aors(self) -> list[str]:
        """Every AOR with at least one binding here (for status pages)."""
        return sorted(self._bindings)

    def republish(self) -> Deferred[list[tuple[bool, object]]]:
        """
        Store every live binding served here in the overlay again.

        A thin client calls this when it has attached to a new peer: the
        values are signed by its own user credential, so it writes them
        itself once it can reach the ring again.  Failures are logged; the
        phones' next REGISTER tries again.
        """
        node_id = self.location.local_node_id
        stores: list[Deferred[object]] = []
        for aor in self.served_aors():
            live = self.local_bindings(aor)
            if not live:
                continue
            d = self.location.register(
                aor, [binding.as_binding(node_id, self.direct_contacts) for binding in live]
            )
            stores.append(cast("Deferred[object]", d.addErrback(self._republish_failed, aor)))
        return DeferredList(stores)

    def _republish_failed(self, failure: Failure, aor: str) -> None:
        self.log.warn(
            "storing the registration of {aor} again failed: {why}; the phone's next REGISTER "
            "tries again",
            aor=blur_aor(aor),
            why=failure.getErrorMessage(),
        )

    def all_bindings(self) -> list[LocalBinding]:
        """Every live binding served here."""
        return [binding for aor in sorted(self._bindings) for binding in self.local_bindings(aor)]

    def restore(self, bindings: Sequence[LocalBinding]) -> int:
        """
        Take back bindings saved before a restart, for AORs that have none
        yet; their overlay entries were stored before they were saved.
        Returns how many were taken.
        """
        by_aor: dict[str, list[LocalBinding]] = {}
        for binding in bindings:
            by_aor.setdefault(binding.aor, []).append(binding)
        taken = 0
        for aor, restored in by_aor.items():
            if aor in self._bindings:
                continue
            restored = restored[:MAX_BINDINGS_PER_AOR]
            self._set_bindings(aor, restored)
            taken += len(restored)
        return taken

    def stop(self) -> None:
        """Cancel expiry timers (service shutdown)."""
        for call in self._expiry_calls.values():
            if call.active():
                call.cancel()
        self._expiry_calls.clear()

    # -- REGISTER ----------------------------------------------------------

    def register_received(self, request: Request, flow: object) -> Deferred[Response]:
        """
        Process one REGISTER; the Deferred fires with the response to send.

        It never fails: every problem becomes an error response.
        """
        # The To header is parsed once here: every response copies it.
        to: NameAddress | None = None
        try:
            to = request.to
            aor = _aor_of(to)
            self._check_request(request, to, flow)
            contacts, wildcard = self._requested_contacts(request)
        except _Refusal as refusal:
            return succeed(self._refuse(request, to, flow, _aor_of(to), refusal))
        except SipParseError as e:
            return succeed(
                self._refuse(request, to, flow, _aor_of(to), _Refusal(e.status, e.reason))
            )
        # Requests for one AOR are applied one after another, so that two
        # REGISTERs racing to the overlay cannot lose a binding; those that
        # arrive while a store is under way are applied together, with one
        # store (p2psip.sip.coalesce), so a hot AOR cannot build a queue.
        pending = _Pending(request, to, flow, contacts, wildcard)
        result = self._batches.submit(aor, pending)
        return result.addErrback(self._batch_full, pending, aor)

    def _batch_full(self, failure: Failure, pending: _Pending, aor: str) -> Response:
        failure.trap(BatchFull)
        refusal = _Refusal(
            503,
            "Service Unavailable (too many REGISTERs for this AOR)",
            (("Retry-After", str(OVERLAY_RETRY_AFTER_SECONDS)),),
            quiet=True,
        )
        return self._refuse(pending.request, pending.to, pending.flow, aor, refusal)

    def _check_request(self, request: Request, to: NameAddress, flow: object) -> None:
        uri = request.uri
        if not isinstance(uri, SipURI) or uri.host.lower() != self.domain or uri.user is not None:
            raise _Refusal(404, "Not the registrar for that domain")
        unsupported = [
            tag for tag in request.headers.values("Require") if tag.strip().lower() != OPTION_TAG
        ]
        if unsupported:
            raise _Refusal(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
        to_uri = to.uri
        if not isinstance(to_uri, SipURI) or to_uri.user is None:
            raise _Refusal(404, "Not Found (the To header must be a sip: AOR)")
        self._authenticate(request, to_uri.address_of_record(), flow_host(flow))
        if to_uri.host.lower() != self.domain:
            raise _Refusal(404, "Not Found (AOR outside the overlay domain)")

    def _authenticate(self, request: Request, aor: str, source: str | None) -> None:
        credentials = self.credentials
        if credentials is None:
            return
        judgement = credentials.judge(
            request.headers.get_all("Authorization"),
            request.method,
            request.uri,
            aor,
            source,
            "REGISTER",
        )
        outcome = judgement.outcome
        if outcome is Outcome.AUTHORIZED:
            return
        if outcome is Outcome.THROTTLED:
            raise _Refusal(403, "Forbidden", quiet=True)
        if outcome is Outcome.FORBIDDEN:
            raise _Refusal(403, "Forbidden")
        if outcome is Outcome.MALFORMED:
            raise _Refusal(400, f"Bad Request ({judgement.reason})")
        raise self._challenge(request, aor, stale=outcome is Outcome.STALE)

    def _challenge(self, request: Request, aor: str, stale: bool) -> _Refusal:
        assert self.authenticator is not None
        offered = self.authenticator.challenges(
            stale=stale, aor=aor, user_agent=request.headers.get("User-Agent")
        )
        headers = tuple(("WWW-Authenticate", value) for value in offered)
        return _Refusal(401, "Unauthorized", headers)

    def _requested_contacts(self, request: Request) -> tuple[list[tuple[NameAddress, int]], bool]:
        """The contacts with the expiry each asks for (s10.3 steps 6 and 7)."""
        if request.contact_wildcard:
            if request.expires != 0:
                raise _Refusal(400, "Bad Request (Contact: * needs Expires: 0)")
            return [], True
        contacts = request.contacts
        if len(contacts) > MAX_CONTACTS_PER_REGISTER:
            raise _Refusal(400, f"Bad Request (more than {MAX_CONTACTS_PER_REGISTER} contacts)")
        header_expires = request.expires
        requested = []
        for contact in contacts:
            expires = contact.expires
            if expires is None:
                expires = (
                    header_expires if header_expires is not None else self.default_expires_seconds
                )
            if 0 < expires < self.min_expires_seconds:
                raise _Refusal(
                    423, "Interval Too Brief", (("Min-Expires", str(self.min_expires_seconds)),)
                )
            contact_text = str(contact.uri)
            if any(character in contact_text for character in '<>" '):
                raise _Refusal(400, "Bad Request (contact URI cannot be stored)")
            requested.append((contact, min(expires, self.max_expires_seconds)))
        if supports_outbound(request):
            with_reg_id = [c for c, _ in requested if reg_id_of(c) is not None]
            if len(with_reg_id) > 1:
                # RFC 5626 s6: one flow, one registration.
                raise _Refusal(400, "Bad Request (more than one Contact with a reg-id)")
        return requested, False

    def _apply_batch(self, aor: str, batch: list[_Pending]) -> Deferred[list[Response]]:
        """
        Apply REGISTERs for one AOR in arrival order, then store the result
        once; each gets its own answer (a refusal, or 200 with the bindings
        after the whole batch).
        """
        now = self.clock.seconds()
        state = self.local_bindings(aor)
        responses: list[Response | None] = [None] * len(batch)
        #: (index in the batch, outcome for the log, whether it asked for SIP Outbound)
        accepted: list[tuple[int, str, bool]] = []
        changed = False
        for index, pending in enumerate(batch):
            request = pending.request
            outbound = supports_outbound(request)
            try:
                via = request.via
                registered_from = (via.host.lower().strip("[]"), via.port or 5060)
                updated = self._updated_bindings(
                    aor,
                    state,
                    pending.requested,
                    pending.wildcard,
                    request.call_id,
                    request.cseq.number,
                    pending.flow,
                    registered_from,
                    now,
                    outbound,
                )
            except _Refusal as refusal:
                responses[index] = self._refuse(request, pending.to, pending.flow, aor, refusal)
                continue
            except SipParseError as e:
                malformed = _Refusal(e.status, e.reason)
                responses[index] = self._refuse(request, pending.to, pending.flow, aor, malformed)
                continue
            if not pending.requested and not pending.wildcard:
                accepted.append((index, "queried", outbound))
                continue
            state = updated
            changed = True
            outcome = "removed all" if not updated else f"{len(updated)} binding(s)"
            accepted.append((index, outcome, outbound))

        def answer(refusal: _Refusal | None) -> list[Response]:
            bindings = self.local_bindings(aor)
            for index, outcome, outbound in accepted:
                pending = batch[index]
                if refusal is None:
                    request = pending.request
                    if outcome != "queried":
                        # RFC 5626: outbound processing took place for this REGISTER.
                        call_id, cseq = request.call_id, request.cseq.number
                        outbound = outbound and any(
                            b.outbound and b.call_id == call_id and b.cseq == cseq for b in bindings
                        )
                    responses[index] = self._accept(
                        request, pending.to, pending.flow, aor, bindings, outcome, outbound
                    )
                else:
                    responses[index] = self._refuse(
                        pending.request, pending.to, pending.flow, aor, refusal
                    )
            return [response for response in responses if response is not None]

        if not changed:
            return succeed(answer(None))
        final = state
        node_id = self.location.local_node_id
        stored = self.location.register(
            aor, [b.as_binding(node_id, self.direct_contacts) for b in final]
        )

        def commit(_: object) -> list[Response]:
            self._set_bindings(aor, final)
            return answer(None)

        def overlay_failed(failure: Failure) -> list[Response]:
            return answer(self._store_refusal(failure, aor))

        return stored.addCallbacks(commit, overlay_failed)

    def _store_refusal(self, failure: Failure, aor: str) -> _Refusal:
        """The answer to REGISTERs whose overlay store failed."""
        if failure.check(NoUserCredential):
            # Logged for the operator (rate-limited) by the location service.
            warning = f'399 {self.domain} "this super-node cannot sign for this user yet"'
            return _Refusal(
                403,
                "Forbidden (user not enrolled on this super-node)",
                (("Warning", warning),),
                quiet=True,
            )
        self.log.warn(
            "overlay store for {aor} failed: {why}; is this peer joined to the ring?",
            aor=blur_aor(aor),
            why=failure.getErrorMessage(),
        )
        return _Refusal(
            503,
            "Service Unavailable (overlay store failed)",
            (("Retry-After", str(OVERLAY_RETRY_AFTER_SECONDS)),),
        )

    def _updated_bindings(
        self,
        aor: str,
        current: list[LocalBinding],
        requested: Sequence[tuple[NameAddress, int]],
        wildcard: bool,
        call_id: str,
        cseq: int,
        flow: object,
        registered_from: tuple[str, int],
        now: float,
        outbound: bool = False,
    ) -> list[LocalBinding]:
        """
        The AOR's binding list after this request (s10.3 step 7).

        With SIP Outbound (the UA supports it and the contact names an
        instance and a reg-id) a binding is the instance's registration over
        one flow: a REGISTER with the same instance and reg-id replaces it,
        whatever its contact URI (RFC 5626 s6).
        """
        if wildcard:
            for binding in current:
                if binding.call_id == call_id and cseq <= binding.cseq:
                    raise _Refusal(400, "Bad Request (CSeq not higher than the binding's)")
            return []
        updated = list(current)
        for contact, expires in requested:
            instance = instance_of(contact) if outbound else None
            reg_id = reg_id_of(contact) if instance is not None else None
            if reg_id is None:
                instance = None
            index = next(
                (
                    i
                    for i, binding in enumerate(updated)
                    if (
                        binding.instance == instance and binding.reg_id == reg_id
                        if reg_id is not None
                        else binding.contact.uri == contact.uri and not binding.outbound
                    )
                ),
                None,
            )
            if index is not None:
                existing = updated[index]
                if existing.call_id == call_id and cseq <= existing.cseq:
                    raise _Refusal(400, "Bad Request (CSeq not higher than the binding's)")
                del updated[index]
            if expires == 0:
                continue
            q = contact.q
            stored_contact = NameAddress(uri=contact.uri.copy())
            updated.append(
                LocalBinding(
                    aor=aor,
                    contact=stored_contact,
                    expires_at=now + expires,
                    q=1.0 if q is None else q,
                    call_id=call_id,
                    cseq=cseq,
                    flow=flow,
                    registered_from=registered_from,
                    instance=instance,
                    reg_id=reg_id,
                )
            )
        if len(updated) > MAX_BINDINGS_PER_AOR:
            raise _Refusal(
                403, f"Forbidden (more than {MAX_BINDINGS_PER_AOR} contacts for one AOR)"
            )
        return updated

    def _set_bindings(self, aor: str, bindings: list[LocalBinding]) -> None:
        self._index_bindings(aor, bindings)
        for observer in self.change_observers:
            observer(aor)

    def _index_bindings(self, aor: str, bindings: list[LocalBinding]) -> None:
        call = self._expiry_calls.pop(aor, None)
        if call is not None and call.active():
            call.cancel()
        for old in self._bindings.get(aor, []):
            _unindex(self._by_contact, _contact_key(old.contact.uri), old)
            address = _contact_address(old.contact.uri)
            if address is not None:
                _unindex(self._by_address, address, old)
        for new in bindings:
            self._by_contact.setdefault(_contact_key(new.contact.uri), []).append(new)
            address = _contact_address(new.contact.uri)
            if address is not None:
                self._by_address.setdefault(address, []).append(new)
        if not bindings:
            self._bindings.pop(aor, None)
            return
        self._bindings[aor] = bindings
        first_expiry = min(binding.expires_at for binding in bindings)
        delay = max(0.0, first_expiry - self.clock.seconds())
        self._expiry_calls[aor] = self.clock.callLater(delay, self._expire, aor)

    def _expire(self, aor: str) -> None:
        """Drop expired bindings; the overlay entry already says when each expires."""
        self._expiry_calls.pop(aor, None)
        live = self.local_bindings(aor)
        gone = len(self._bindings.get(aor, [])) - len(live)
        if gone:
            self.log.debug("{count} binding(s) of {aor} expired", count=gone, aor=blur_aor(aor))
        self._set_bindings(aor, live)

    # -- responses ------------------------------------------------------------

    def _response(
        self, request: Request, to: NameAddress | None, status: int, reason: str | None
    ) -> Response:
        """A response with a To tag, reusing the already parsed To header."""
        response = make_response(request, status, reason)
        to_line = request.headers.get("To")
        if to is not None and to.tag is None and to_line is not None:
            response.headers.set("To", f"{to_line};tag={self._random_bytes(8).hex()}")
        return response

    def _accept(
        self,
        request: Request,
        to: NameAddress,
        flow: object,
        aor: str,
        bindings: list[LocalBinding],
        outcome: str,
        outbound: bool = False,
    ) -> Response:
        response = self._response(request, to, 200, None)
        now = self.clock.seconds()
        for binding in bindings:
            contact = NameAddress(uri=binding.contact.uri.copy())
            contact.parameters["expires"] = str(max(0, int(math.ceil(binding.expires_at - now))))
            if binding.q != 1.0:
                contact.parameters["q"] = format_q(binding.q)
            if binding.outbound:
                contact.parameters["+sip.instance"] = f'"<{binding.instance}>"'
                contact.parameters["reg-id"] = str(binding.reg_id)
            response.headers.add("Contact", str(contact))
        if outbound:
            # RFC 5626 s6: the registrar did outbound processing; keep the flow alive.
            response.headers.add("Require", OPTION_TAG)
            response.headers.add("Flow-Timer", str(FLOW_TIMER_SECONDS))
        # At info level the proxy's summary counts REGISTERs once a minute
        # (p2psip.sip.request_log); a line each would cost as much as the request.
        self.log.debug(
            "REGISTER {aor} from {source}: 200 {outcome}",
            aor=blur_aor(aor),
            source=blur_flow(flow),
            outcome=outcome,
        )
        return response

    def _refuse(
        self, request: Request, to: NameAddress | None, flow: object, aor: str, refusal: _Refusal
    ) -> Response:
        response = self._response(request, to, refusal.status, refusal.reason)
        for name, value in refusal.headers:
            response.headers.add(name, value)
        if refusal.quiet:
            return response
        # Per request only at debug level, as for accepted ones: a flood of
        # refusals would otherwise fill the log.
        self.log.debug(
            "REGISTER {aor} from {source}: {status} {reason}",
            aor=blur_aor(aor),
            source=blur_flow(flow),
            status=refusal.status,
            reason=refusal.reason,
        )
        return response
