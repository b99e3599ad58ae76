"""
The HTTP site every role serves on ``--http``: status page, status JSON,
metrics and the local admin API.

Paths:

``GET /``
    A self-contained HTML page (:mod:`p2psip.web.page`) that polls
    ``/status`` and, on ring roles, draws the ring from ``/api/ring-view``
    and ``/api/peer-tables`` with the admin token the operator gives it.
``GET /status``
    ``application/json``: whatever the role's status callable returns.
``GET /metrics``
    The role's ``prometheus_client`` registry in the Prometheus text format
    (version 0.0.4), as ``prometheus_client.exposition.generate_latest``
    renders it.
``/api/NAME``
    JSON in, JSON out, for holders of the role's admin token
    (:mod:`p2psip.util.admin_token`): a request without
    ``Authorization: Bearer TOKEN``, or with another token, is a 401 with
    ``WWW-Authenticate: Bearer``.  Query-string arguments arrive as ``args`` (each name
    at most once), a request body must be a JSON object sent as
    ``Content-Type: application/json`` and arrives as ``body``.  The callable
    raises ``ApiError(status, message)`` for errors the caller made; those
    become ``{"error": message}`` with that status.  Anything else it raises
    is logged and answered with 500.

Request bodies are limited while they arrive (:class:`_LimitedRequest`):
Twisted's own Request would store a body of any size, in a temporary file
beyond 100 KB, before the resource sees it.  A Content-Length above
:data:`MAX_REQUEST_BODY_BYTES`, or a chunked body that grows past it, is
answered 413 at once and the connection closed; nothing beyond the limit
is kept.  Refusals an operator should hear about are logged at warn, at
most one line per source a minute (:mod:`p2psip.util.log_throttle`).
Malformed input (bad UTF-8 or percent-encoding, JSON that is not an
object, unpaired surrogates) is a 400 with a JSON error, in the access log
at debug only; the refusals below (token, Host, body size) are warnings.

Every request must name this listener in its Host header: its own address
as an IP literal (``127.0.0.1:8084``, ``[::1]:8084``), ``localhost`` with
the port, or a name listed in ``allowed_hosts`` (any port).  Anything else
is a 421.  A web page that rebinds its own DNS name to 127.0.0.1 reaches
the listener with that name as Host, so this keeps such a page from
reading ``/status`` or driving the API; a page loaded from the literal
address is the site itself.

The admin API changes what the overlay stores, so it listens on loopback by
default.  Requiring ``application/json`` on request bodies means that a web
page in the operator's browser cannot post to it (browsers send cross-origin
JSON only after a CORS preflight, which this site never grants).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Mapping
from io import BytesIO
from typing import Any, NamedTuple, TypeVar, Union, cast
from urllib.parse import parse_qsl

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IReactorTCP, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from p2psip.util.connection_limit import ConnectionLimitFactory
from p2psip.util.log_throttle import LOG_INTERVAL_SECONDS, LogThrottle
from p2psip.util.logs import Logger
from p2psip.web.page import CONTENT_SECURITY_POLICY, render_page

#: Admin requests are small JSON objects; anything bigger is refused.
MAX_REQUEST_BODY_BYTES = 64 * 1024
#: Bound on query-string fields, so a hostile URL cannot make us build a huge dict.
MAX_QUERY_FIELDS = 32

FieldT = TypeVar("FieldT")
JsonObject = dict[str, Any]
JsonResult = Union[JsonObject, "Deferred[JsonObject]"]
StatusCallable = Callable[[], JsonResult]
ApiCallable = Callable[[dict[str, str], Union[JsonObject, None]], JsonResult]


class ApiError(Exception):
    """An error the API caller made or must know about: answered with ``status`` and a JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


class ApiRoute(NamedTuple):
    """The HTTP methods an API name accepts, and what answers it."""

    methods: Collection[str]
    call: ApiCallable


def query_argument(args: Mapping[str, str], name: str) -> str:
    """A required, non-empty query argument, or a 400 that names it."""
    value = args.get(name, "")
    if not value:
        raise ApiError(400, f"missing query argument {name!r}")
    return value


_FIELD_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def body_field(
    body: Mapping[str, Any] | None, name: str, kind: type[FieldT], default: FieldT | None = None
) -> FieldT:
    """
    A field of the JSON body checked against ``kind``, or a 400 that names it.

    A missing field gives ``default`` when one is given.  ``bool`` is not
    accepted for ``int`` (JSON true is not a lifetime).
    """
    if body is None or name not in body or body[name] is None:
        if default is not None:
            return default
        raise ApiError(400, f"the JSON body needs a field {name!r}")
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = _FIELD_TYPE_NAMES.get(kind, kind.__name__)
        raise ApiError(400, f"field {name!r} must be {expected}")
    return value


def _set_common_headers(request: Request) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


def _json_bytes(payload: object) -> bytes:
    # An unpaired surrogate cannot be UTF-8; backslashreplace writes it as
    # \udXXX, which is that character's JSON escape, so the answer stays valid.
    text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8", "backslashreplace") + b"\n"


class _JsonResource(Resource):
    """Shared plumbing: run a callable that may return a Deferred, answer JSON."""

    log = Logger()

    def _answer(self, request: Request, produce: Callable[[], JsonResult]) -> object:
        disconnected: list[bool] = []
        request.notifyFinish().addErrback(lambda _reason: disconnected.append(True))
        result: Deferred[tuple[int, bytes]] = maybeDeferred(produce).addCallback(
            lambda payload: (200, _json_bytes(payload))
        )
        result.addErrback(self._error_answer, request)
        result.addCallback(self._send, request, disconnected)
        result.addErrback(lambda failure: self.log.failure("while sending an HTTP answer", failure))
        return NOT_DONE_YET

    def _error_answer(self, failure: Failure, request: Request) -> tuple[int, bytes]:
        if failure.check(ApiError):
            error = failure.value
            assert isinstance(error, ApiError)
            return error.status, _json_bytes({"error": error.message})
        self.log.failure(
            "while answering {method} {path}",
            failure,
            method=request.method.decode("ascii", "replace"),
            path=(request.path or b"").decode("ascii", "replace"),
        )
        return 500, _json_bytes({"error": "internal error; the role's log has the details"})

    @staticmethod
    def _send(answer: tuple[int, bytes], request: Request, disconnected: list[bool]) -> None:
        if disconnected:
            return
        status, body = answer
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        _set_common_headers(request)
        request.write(body)
        request.finish()

    @staticmethod
    def _immediate(request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        _set_common_headers(request)
        return _json_bytes({"error": message})


class _StatusResource(_JsonResource):
    def __init__(self, status: StatusCallable) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Request) -> object:
        return self._answer(request, self._status)


class _MetricsResource(Resource):
    """
    The registry in text format 0.0.4, the format every Prometheus reads.

    ``generate_latest`` writes that format whatever the library's newest
    one is, so the content type is pinned to it rather than taken from
    ``CONTENT_TYPE_LATEST``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
        _set_common_headers(request)
        return body


class _PageResource(Resource):
    def __init__(self, title: str, ring_page: bool) -> None:
        super().__init__()
        self._page = render_page(title, ring_page)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii"))
        request.setHeader(b"x-frame-options", b"DENY")
        _set_common_headers(request)
        return self._page


def _query_arguments(request: Request) -> dict[str, str]:
    """The query string as a dict; a name given twice or bad UTF-8 is a 400."""
    uri: bytes = request.uri or b""
    _, _, query = uri.partition(b"?")
    try:
        pairs = parse_qsl(
            query.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_QUERY_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ApiError(400, f"malformed query string: {e}") from None
    arguments: dict[str, str] = {}
    for name, value in pairs:
        if name in arguments:
            raise ApiError(400, f"query argument {name!r} given more than once")
        arguments[name] = value
    return arguments


def _json_body(request: Request) -> JsonObject | None:
    """The request body as a JSON object, or None when there is no body."""
    content = request.content
    data = content.read(MAX_REQUEST_BODY_BYTES + 1) if content is not None else b""
    if len(data) > MAX_REQUEST_BODY_BYTES:
        raise ApiError(413, f"request body larger than {MAX_REQUEST_BODY_BYTES} bytes")
    if not data.strip():
        return None
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise ApiError(415, "send the request body as Content-Type: application/json")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        # JSON may escape half of a surrogate pair (\ud800), which no UTF-8
        # text holds: refuse it here rather than fail where it is encoded.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400, "request body has a \\u escape of an unpaired surrogate (D800-DFFF)"
        ) from None
    return body


_TOKEN_HINT = (
    "send Authorization: Bearer TOKEN with the token from the file admin-token in the "
    "role's data-dir (the p2psip command reads it: --data-dir or --token-file)"
)


def token_refusal(request: http.Request, admin_token: str | None) -> str | None:
    """
    Why the request does not carry ``admin_token``, or None when it does.

    The comparison takes the same time wherever the tokens differ
    (``hmac.compare_digest``).  With no token (None) every request is refused.
    """
    values = request.requestHeaders.getRawHeaders(b"authorization") or []
    if not values:
        return f"this API needs the role's admin token: {_TOKEN_HINT}"
    scheme, _, given = values[0].strip().partition(b" ")
    if len(values) != 1 or scheme.lower() != b"bearer" or not given.strip():
        return f"malformed Authorization header: {_TOKEN_HINT}"
    if admin_token is None:
        return "this role has no admin token, so its admin API is closed"
    if not hmac.compare_digest(given.strip(), admin_token.encode("ascii")):
        return (
            "wrong admin token: use the one in the file admin-token in this role's data-dir "
            "(the role writes a new one only when the file is missing)"
        )
    return None


class _ApiRouteResource(_JsonResource):
    def __init__(self, name: str, route: ApiRoute, admin_token: str | None) -> None:
        super().__init__()
        self._name = name
        self._methods = frozenset(method.upper() for method in route.methods)
        self._call = route.call
        self._admin_token = admin_token

    def render(self, request: Request) -> object:
        why = token_refusal(request, self._admin_token)
        if why is not None:
            site = request.site
            if isinstance(site, _StatusSite):
                site.refusals.refused(_source(request), 401, f"/api/{self._name}: {why}")
            given = request.requestHeaders.hasHeader(b"authorization")
            challenge = b'Bearer realm="p2psip admin API"'
            if given:
                challenge += b', error="invalid_token"'
            request.setHeader(b"www-authenticate", challenge)
            return self._immediate(request, 401, why)
        method = request.method.decode("ascii", "replace").upper()
        if method == "HEAD" and "GET" in self._methods:
            method = "GET"
        if method not in self._methods:
            allowed = ", ".join(sorted(self._methods))
            request.setHeader(b"allow", allowed.encode("ascii"))
            return self._immediate(
                request, 405, f"/api/{self._name} accepts {allowed}, not {method}"
            )

        def produce() -> JsonResult:
            arguments = _query_arguments(request)
            body = _json_body(request)
            return self._call(arguments, body)

        return self._answer(request, produce)


class _ApiNotFound(_JsonResource):
    isLeaf = True

    def __init__(self, names: Collection[str]) -> None:
        super().__init__()
        self._names = sorted(names)

    def render(self, request: Request) -> bytes:
        known = ", ".join(f"/api/{name}" for name in self._names) or "none"
        return self._immediate(request, 404, f"no such API; known: {known}")


class _ApiRoot(Resource):
    def __init__(self, routes: Mapping[str, ApiRoute], admin_token: str | None) -> None:
        super().__init__()
        self._routes = {
            name: _ApiRouteResource(name, route, admin_token) for name, route in routes.items()
        }

    def getChild(self, path: bytes, request: Request) -> Resource:
        name = path.decode("utf-8", "replace")
        child = self._routes.get(name)
        if child is None or request.postpath:
            return _ApiNotFound(self._routes)
        return child

    def render(self, request: Request) -> bytes:
        return _ApiNotFound(self._routes).render(request)


class _RefusalLog:
    """Warnings about refused requests: one line per source a minute, with the count held back."""

    log = Logger()

    def __init__(self, clock: IReactorTime) -> None:
        self.throttle = LogThrottle(clock)

    def refused(self, source: str, status: int, why: str) -> None:
        held_back = self.throttle.admit(source)
        if held_back is None:
            return
        self.log.warn(
            "HTTP site: refused a request from {source} with {status}: {why}{held_back_note}",
            source=source,
            status=status,
            why=why,
            held_back=held_back,
            held_back_note=(
                f" ({held_back} more refusals from there in the last "
                f"{LOG_INTERVAL_SECONDS:g}s were not logged)"
                if held_back
                else ""
            ),
        )


def _source(request: http.Request) -> str:
    """The client's address without the port, for refusal logs."""
    address = request.getClientAddress()
    return str(getattr(address, "host", None) or address)


class _LimitedRequest(Request):
    """
    A Request that keeps at most :data:`MAX_REQUEST_BODY_BYTES` of body.

    The channel calls ``gotLength`` once the headers are in (None for a
    chunked body) and then ``handleContentChunk`` for each piece of body.
    A declared length over the limit is refused before any body byte is
    read; a chunked body is counted and refused as soon as it passes the
    limit.  The refusal is a 413 written straight to the transport (the
    request line is not yet processed, so Request.write cannot be used),
    then the connection is closed and any further body dropped.
    """

    max_body_bytes = MAX_REQUEST_BODY_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.body_bytes_received = 0
        self.body_refused = False

    def gotLength(self, length: int | None) -> None:
        # Always memory: the body is bounded, so Twisted's temporary file
        # (used for chunked bodies and long ones) is never wanted.
        self.content = BytesIO()
        if length is not None and length > self.max_body_bytes:
            self._refuse_body(f"declared a body of {length} bytes")

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_refused:
            return
        self.body_bytes_received += len(data)
        if self.body_bytes_received > self.max_body_bytes:
            self._refuse_body("sent a chunked body past the limit")
            return
        assert self.content is not None
        self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body_refused:
            return  # already answered; the connection is closing
        super().requestReceived(command, path, version)

    def _refuse_body(self, what: str) -> None:
        self.body_refused = True
        # The channel would answer "Expect: 100-continue" right after
        # gotLength returns, behind the 413; the body is not wanted.
        self.requestHeaders.removeHeader(b"expect")
        message = f"request body larger than {self.max_body_bytes} bytes"
        body = _json_bytes({"error": message})
        head = [
            b"HTTP/1.1 413 Content Too Large",
            b"Content-Type: application/json; charset=utf-8",
            b"Content-Length: " + str(len(body)).encode("ascii"),
            b"Connection: close",
            b"Cache-Control: no-store",
            b"X-Content-Type-Options: nosniff",
        ]
        channel = self.channel
        assert channel.transport is not None
        channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        channel.loseConnection()
        site = getattr(channel, "site", None)
        if isinstance(site, _StatusSite):
            site.refusals.refused(
                _source(self), 413, f"{what}, over the {self.max_body_bytes}-byte limit"
            )


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def allowed_host(text: str) -> str:
    """
    Coercer for ``--http-allowed-hosts``: a DNS name (or IP address) that
    browsers and tools may use to reach the status site, without a port.

    Returns it in lower case without a trailing dot, as Host headers are compared.
    """
    name = text.strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(name):
        raise ValueError(f"{text!r} is not a host name")
    return name


allowed_host.coerceDoc = "a host name such as status.example.org, without a port"  # type: ignore[attr-defined]


def _split_host_header(value: bytes) -> tuple[str, int | None] | None:
    """``(host, port)`` from a Host header (port None when absent), or None if malformed."""
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            return None
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
    if not host:
        return None
    if not rest:
        return host, None
    port = rest[1:]
    if not rest.startswith(":") or not port.isdigit() or len(port) > 5:
        return None
    return host, int(port)


def _same_address(host: str, local: str) -> bool:
    """Whether ``host`` is an IP literal for the listener's address ``local``."""
    try:
        given, own = ipaddress.ip_address(host), ipaddress.ip_address(local)
    except ValueError:
        return False
    if isinstance(own, ipaddress.IPv6Address) and own.ipv4_mapped is not None:
        own = own.ipv4_mapped  # a dual-stack socket reached over IPv4
    return given == own


def host_refusal(request: http.Request, allowed_hosts: Collection[str]) -> tuple[int, str] | None:
    """
    The status and reason to refuse a request whose Host header does not
    name this listener, or None when it does.

    See the module docstring for what is accepted: a missing, repeated or
    malformed Host is a 400 (as RFC 9112 section 3.2 asks), a foreign one a
    421.  Listeners that are not IP sockets (``unix:``) cannot be reached
    by a browser and accept any Host.
    """
    local = request.getHost()
    if not isinstance(local, (IPv4Address, IPv6Address)):
        return None
    own = f"[{local.host}]:{local.port}" if ":" in local.host else f"{local.host}:{local.port}"
    # The configured names are not listed: a rebinding page may read this answer.
    accepted = f"{own} or localhost:{local.port}"
    if allowed_hosts:
        accepted += " or a name in http-allowed-hosts"
    values = request.requestHeaders.getRawHeaders(b"host") or []
    if len(values) != 1:
        return 400, f"send one Host header naming this listener ({accepted})"
    parsed = _split_host_header(values[0])
    if parsed is None:
        return 400, f"malformed Host header {values[0][:100]!r}; send {accepted}"
    host, port = parsed
    try:
        canonical = str(ipaddress.ip_address(host))
    except ValueError:
        canonical = host.rstrip(".")
    if canonical in allowed_hosts:
        return None
    if port is None:
        port = 443 if request.isSecure() else 80
    if port == local.port and (canonical == "localhost" or _same_address(host, local.host)):
        return None
    return 421, (
        f"Host {values[0][:100].decode('ascii', 'backslashreplace')!r} is not this "
        f"listener ({accepted}); connect by that address, or list the name in "
        "http-allowed-hosts (--http-allowed-hosts)"
    )


class _Refused(Resource):
    """The answer to a request refused before it reached its resource."""

    isLeaf = True

    def __init__(self, status: int, message: str) -> None:
        super().__init__()
        self.status = status
        self.message = message

    def render(self, request: Request) -> bytes:
        return _JsonResource._immediate(request, self.status, self.message)


#: How long a client may take to send one whole request (line, headers and
#: body).  The idle timeout alone is reset by every byte, so a client
#: dripping one byte at a time would hold its connection for ever.
REQUEST_DEADLINE_SECONDS = 10.0
#: A connection that sends nothing for this long is closed.
IDLE_TIMEOUT_SECONDS = 30.0
#: Connections one address may hold open on the HTTP listener, and all together.
HTTP_CONNECTIONS_PER_SOURCE = 32
HTTP_MAX_CONNECTIONS = 256


class _DeadlineChannel(http.HTTPChannel):
    """An HTTP/1.1 channel that must receive each request within a deadline."""

    _deadline: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._deadline is None and not self._handlingRequest and data:
            self._deadline = self.callLater(REQUEST_DEADLINE_SECONDS, self._too_slow)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport is None:
            return
        peer = self.transport.getPeer()
        source = peer.host if isinstance(peer, (IPv4Address, IPv6Address)) else "?"
        if isinstance(self.factory, _StatusSite):
            self.factory.refusals.refused(
                source, 408, f"request not received within {REQUEST_DEADLINE_SECONDS:g} s"
            )
        self.transport.loseConnection()


class _StatusSite(Site):
    """
    The role's Site: bodies limited while they arrive, refusals logged
    (rate-limited), and the access log at debug level.
    """

    access_log = Logger()
    requestFactory = _LimitedRequest
    protocol = _DeadlineChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        allowed_hosts: Collection[str] = (),
        reactor: IReactorTime | None = None,
    ) -> None:
        # Form bodies are not parsed into request.args: the API reads JSON only.
        super().__init__(
            resource,
            reactor=reactor,
            parsePOSTFormSubmission=False,
            timeout=IDLE_TIMEOUT_SECONDS,
        )
        self.allowed_hosts = frozenset(allowed_host(name) for name in allowed_hosts)
        self.refusals = _RefusalLog(self.reactor)

    def getResourceFor(self, request: Request) -> Resource:
        refusal = host_refusal(request, self.allowed_hosts)
        if refusal is not None:
            self.refusals.refused(_source(request), *refusal)
            request.site = self
            return _Refused(*refusal)
        resource: Resource = super().getResourceFor(request)
        return resource

    def log(self, request: http.Request) -> None:
        # Prometheus scrapes and the page's polling would otherwise fill the
        # log with one line every few seconds.
        self.access_log.debug(
            "{method} {path} -> {code}",
            method=request.method.decode("ascii", "replace"),
            path=(request.path or b"").decode("ascii", "replace"),
            code=request.code,
        )


def build_site(
    *,
    status: StatusCallable,
    metrics: CollectorRegistry,
    api: Mapping[str, ApiRoute],
    admin_token: str | None,
    title: str,
    ring_page: bool = False,
    allowed_hosts: Collection[str] = (),
    reactor: IReactorTime | None = None,
) -> Site:
    """
    The role's status/metrics/admin site.

    ``status`` returns (or fires with) the JSON object for ``/status``;
    ``api`` maps names to routes served at ``/api/NAME`` to holders of
    ``admin_token`` (None: to nobody); ``ring_page`` makes ``/`` draw the
    ring from ``/api/ring-view``; ``allowed_hosts`` are the
    names (besides the listener's address and localhost) accepted in Host
    headers.  ``reactor`` schedules the HTTP timeouts and paces the refusal
    warnings (the global reactor when None).
    """
    root = Resource()
    root.putChild(b"", _PageResource(title, ring_page))
    root.putChild(b"status", _StatusResource(status))
    root.putChild(b"metrics", _MetricsResource(metrics))
    root.putChild(b"api", _ApiRoot(dict(api), admin_token))
    site = _StatusSite(root, allowed_hosts, reactor=reactor)
    site.displayTracebacks = False
    return site


class _HttpListenerService(StreamServerEndpointService):
    """Listen for the site; a busy or forbidden port names the option to change."""

    def __init__(self, endpoint: Any, factory: IProtocolFactory, description: str) -> None:
        super().__init__(endpoint, factory)
        self._description = description
        # Fail startup on a busy port instead of only logging it.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise CannotListenError(
                e.interface,
                e.port,
                f"{e.socketError}; the --http option (http key of the config file) asks for "
                f"{self._description}: stop what uses that port or choose another",
            ) from None


def http_service(
    description: str,
    site: Site,
    reactor: IReactorTCP,
    *,
    connections_per_source: int = HTTP_CONNECTIONS_PER_SOURCE,
    max_connections: int = HTTP_MAX_CONNECTIONS,
) -> IService:
    """
    A service listening with ``site`` on an endpoint string such as
    ``tcp:8084:interface=127.0.0.1``.  Startup fails if the port is busy,
    with an error that names the option.

    At most ``connections_per_source`` connections from one address, and
    ``max_connections`` in all, are open at once
    (:mod:`p2psip.util.connection_limit`): with the request deadline and the
    idle timeout this bounds what a client holding connections can take.
    """
    endpoint = endpoints.serverFromString(reactor, description)
    limited = ConnectionLimitFactory(
        site,
        cast(IReactorTime, getattr(site, "reactor", reactor)),
        connections_per_source,
        max_connections,
        what="HTTP",
        hint="nothing here: keep the http listener on loopback or behind a reverse proxy",
    )
    return _HttpListenerService(endpoint, limited, description)


def bounded_site(
    resource: Resource,
    *,
    max_body_bytes: int,
    allowed_hosts: Collection[str] = (),
    reactor: IReactorTime | None = None,
) -> Site:
    """
    A Site for another listener than ``--http`` (the bootstrap's enrolment
    server) with this module's protections: bodies limited to
    ``max_body_bytes`` while they arrive, the per-request deadline and idle
    timeout, the Host check, and refusals logged at warn, rate-limited,
    through ``site.refusals.refused(source, status, why)``.
    """
    site = _StatusSite(resource, allowed_hosts, reactor=reactor)
    site.requestFactory = type(  # type: ignore[assignment]
        "_BoundedRequest", (_LimitedRequest,), {"max_body_bytes": max_body_bytes}
    )
    site.displayTracebacks = False
    return site


def refuse_logged(request: http.Request, status: int, why: str) -> None:
    """Log a refusal through the request's site (rate-limited per source), if it is one of ours."""
    site = getattr(request, "site", None)
    if isinstance(site, _StatusSite):
        site.refusals.refused(_source(request), status, why)
