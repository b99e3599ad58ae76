"""
``p2psip status|ring|put|get|lookup``: talk to a running role's admin API.

The API is JSON over HTTP on the role's ``--http`` listener (loopback by
default); see ``p2psip.web.site``.  The calls are::

    GET  /status                       free-form status of the node
    GET  /api/ring                     {"nodes": [{"node_id", "address"}], "complete"}
    POST /api/put   {"name", "value", "lifetime"}
                                       {"resource_id", "stored_at", "replicas", "route", "hops"}
    GET  /api/get?name=NAME            {"resource_id", "found", "value", "stored_at", "route", "hops"}
    GET  /api/get?name=sip:AOR         {"kind": "sip-registration", "aor", "resource", "found",
                                        "bindings": [{"contact", "expires", "q", "served_by"}], ...}
    GET  /api/lookup?name=NAME         {"resource_id", "responsible", "route", "hops"}
    GET  /api/ring-view                {"node_id", "members", "links", "complete", ...}
    GET  /api/peer-tables?node=ID      {"node_id", "predecessors", "successors", "fingers"}

Errors come back as ``{"error": message}`` with an HTTP error status.

Every call but ``status`` sends the role's admin token
(``Authorization: Bearer TOKEN``), read from the file ``admin-token`` in the
role's data directory: ``--token-file FILE``, else ``--data-dir DIR`` (or
``$P2PSIP_DATA_DIR``), else the data directory the role uses by default
when ``--api`` is that role's default address (:data:`DEFAULT_DATA_DIRS`).
``status`` needs no token.

The command line blocks on urllib: it makes one request and exits.  Output is
for people unless ``--json`` is given; text that other peers chose
(addresses, stored values) has control characters escaped so it cannot
drive the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, Protocol

from p2psip.cli import Subcommands
from p2psip.util.admin_token import AdminTokenError, read_token, token_path

DEFAULT_API_URL = "http://127.0.0.1:8084"
API_URL_VARIABLE = "P2PSIP_API"
DATA_DIR_VARIABLE = "P2PSIP_DATA_DIR"
#: The roles' default --http ports and the --data-dir each role then uses by default.
DEFAULT_DATA_DIRS = {
    8084: "/var/lib/p2psip/bootstrap",
    8085: "/var/lib/p2psip/peer",
    8088: "/var/lib/p2psip/client",
}
REQUEST_TIMEOUT_SECONDS = 30.0
#: Status and ring documents are small; refuse to buffer a runaway answer.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
#: Status sections printed first, in this order; others follow as they come.
STATUS_SECTIONS = ("node", "neighbours", "storage", "connections", "sip")


class Opener(Protocol):
    """
    How :class:`AdminClient` opens a URL: ``urllib.request.urlopen``'s shape.

    It answers a context manager whose value reads the response body; an
    HTTP error status raises ``urllib.error.HTTPError`` and an unreachable
    server ``URLError`` or ``OSError``, as urlopen does.
    """

    def __call__(
        self, request: urllib.request.Request, /, *, timeout: float
    ) -> AbstractContextManager[IO[bytes]]: ...


class AdminError(Exception):
    """The admin API could not be reached or refused the request; the message says what to do."""


def default_token_file(
    api_url: str, data_dir: str | None = None, token_file: str | None = None
) -> Path | None:
    """
    Where the token of the role at ``api_url`` is: ``token_file``, else
    ``admin-token`` in ``data_dir``, else in the default data directory of
    the role whose default address ``api_url`` is; None when unknown.
    """
    if token_file:
        return Path(token_file)
    if data_dir:
        return token_path(data_dir)
    parsed = urllib.parse.urlsplit(api_url)
    try:
        port = parsed.port
    except ValueError:
        return None
    if parsed.hostname in ("127.0.0.1", "localhost", "::1") and port in DEFAULT_DATA_DIRS:
        return token_path(DEFAULT_DATA_DIRS[port])
    return None


class AdminClient:
    """
    Blocking client of a role's admin API.

    ``token`` (or the file ``token_file``, read when a call first needs it)
    is the role's admin token.  ``urlopen`` is the seam tests replace; it is
    called like ``urllib.request.urlopen(request, timeout=...)``, which is
    the default.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        urlopen: Opener | None = None,
        timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        *,
        token_file: str | os.PathLike[str] | None = None,
        token: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(api_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise AdminError(
                f"--api must be an http:// URL such as {DEFAULT_API_URL}, not {api_url!r}"
            )
        self.api_url = api_url.rstrip("/")
        self._urlopen = urlopen
        self._timeout_seconds = timeout_seconds
        self.token_file = Path(token_file) if token_file is not None else None
        self._token = token

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/status", authenticated=False)

    def ring(self) -> dict[str, Any]:
        return self._call("GET", "/api/ring")

    def ring_view(self) -> dict[str, Any]:
        """What the ring page draws: members with their arcs, this node's links by path."""
        return self._call("GET", "/api/ring-view")

    def peer_tables(self, node_id: str) -> dict[str, Any]:
        """A member's predecessors, successors and fingers (32 hex digits, as /status shows)."""
        return self._call("GET", "/api/peer-tables", query={"node": node_id})

    def put(self, name: str, value: str, lifetime_seconds: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "value": value}
        if lifetime_seconds is not None:
            body["lifetime"] = lifetime_seconds
        return self._call("POST", "/api/put", body=body)

    def get(self, name: str, kind: str | None = None) -> dict[str, Any]:
        query = {"name": name}
        if kind is not None:
            query["kind"] = kind
        return self._call("GET", "/api/get", query=query)

    def lookup(self, name: str) -> dict[str, Any]:
        return self._call("GET", "/api/lookup", query={"name": name})

    def _call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        authenticated: bool = True,
    ) -> dict[str, Any]:
        url = self.api_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None
        headers = {"Accept": "application/json"}
        if authenticated:
            headers["Authorization"] = "Bearer " + self._admin_token()
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        urlopen: Opener = self._urlopen or urllib.request.urlopen
        try:
            with urlopen(request, timeout=self._timeout_seconds) as response:
                raw = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as e:
            message = self._http_error_message(url, e)
            if e.code == 401:
                where = f"the token from {self.token_file}" if self.token_file else "a token"
                message += (
                    f" (p2psip sent {where}: give the --data-dir of the role at "
                    f"{self.api_url}, or --token-file FILE)"
                )
            raise AdminError(message) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (TimeoutError, socket.timeout)):
                raise self._timeout_error(url) from None
            raise AdminError(
                f"cannot reach the admin API at {self.api_url}: is the role running? "
                f"is --http set to that address? ({e.reason})"
            ) from None
        except (TimeoutError, socket.timeout):
            raise self._timeout_error(url) from None
        except OSError as e:
            raise AdminError(
                f"cannot reach the admin API at {self.api_url}: is the role running? "
                f"is --http set to that address? ({e})"
            ) from None
        return self._decode(url, raw)

    def _admin_token(self) -> str:
        if self._token is not None:
            return self._token
        if self.token_file is None:
            raise AdminError(
                f"the admin API at {self.api_url} needs the role's token: give --data-dir DIR "
                "(the role's data-dir, where it keeps the file admin-token) or --token-file FILE"
            )
        try:
            self._token = read_token(self.token_file)
        except AdminTokenError as e:
            raise AdminError(
                f"{e}; give p2psip the --data-dir of the role at {self.api_url} "
                "(or --token-file FILE)"
            ) from None
        return self._token

    def _timeout_error(self, url: str) -> AdminError:
        return AdminError(
            f"no answer from {url} within {self._timeout_seconds:g} seconds; "
            "the role may be busy or the overlay slow: check the role's log"
        )

    @staticmethod
    def _http_error_message(url: str, error: urllib.error.HTTPError) -> str:
        try:
            detail = json.loads(error.read(MAX_RESPONSE_BYTES).decode("utf-8"))["error"]
        except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
            detail = error.reason
        return f"{url} answered {error.code}: {detail}"

    @staticmethod
    def _decode(url: str, raw: bytes) -> dict[str, Any]:
        if len(raw) > MAX_RESPONSE_BYTES:
            raise AdminError(f"{url} sent more than {MAX_RESPONSE_BYTES} bytes; is --api right?")
        try:
            document = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise AdminError(
                f"{url} did not answer JSON; is --api pointing at a p2psip role's --http address?"
            ) from None
        if not isinstance(document, dict):
            raise AdminError(f"{url} answered JSON that is not an object; is --api right?")
        return document


# Human-readable output.


def printable(value: object) -> str:
    """Text for the terminal: None as '-', booleans as yes/no, control characters escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "".join(
        repr(ch)[1:-1] if unicodedata.category(ch).startswith("C") else ch for ch in text
    )


def _is_scalar(value: object) -> bool:
    return not isinstance(value, (dict, list))


def _pretty(value: object, indent: int) -> list[str]:
    """Lines for a JSON value nested under a heading at ``indent``."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return [pad + "(none)"]
        lines = []
        for key, item in value.items():
            if _is_scalar(item):
                lines.append(f"{pad}{printable(key)}: {printable(item)}")
            elif isinstance(item, list) and all(_is_scalar(x) for x in item):
                listed = ", ".join(printable(x) for x in item) if item else "(none)"
                lines.append(f"{pad}{printable(key)}: {listed}")
            else:
                lines.append(f"{pad}{printable(key)}:")
                lines.extend(_pretty(item, indent + 1))
        return lines
    if isinstance(value, list):
        if not value:
            return [pad + "(none)"]
        lines = []
        for item in value:
            if isinstance(item, dict) and all(_is_scalar(x) for x in item.values()):
                pairs = "  ".join(f"{printable(k)}={printable(v)}" for k, v in item.items())
                lines.append(f"{pad}- {pairs}")
            elif _is_scalar(item):
                lines.append(f"{pad}- {printable(item)}")
            else:
                lines.append(f"{pad}-")
                lines.extend(_pretty(item, indent + 1))
        return lines
    return [pad + printable(value)]


def format_status(status: Mapping[str, Any]) -> str:
    """The status document as sections: node, neighbours, storage, connections, sip, then the rest."""
    order = [s for s in STATUS_SECTIONS if s in status] + [
        s for s in status if s not in STATUS_SECTIONS
    ]
    lines: list[str] = []
    for section in order:
        value = status[section]
        if _is_scalar(value):
            lines.append(f"{printable(section)}: {printable(value)}")
            continue
        lines.append(f"{printable(section)}")
        lines.extend(_pretty(value, 1))
    return "\n".join(lines)


def _listing(value: object, separator: str = ", ") -> str:
    """A JSON list as one line; anything else as itself."""
    if isinstance(value, list):
        return separator.join(printable(item) for item in value)
    return "" if value is None else printable(value)


def _route(answer: Mapping[str, Any]) -> str:
    path = _listing(answer.get("route"), " -> ")
    hops = answer.get("hops")
    return f"{path or '(local)'} ({printable(hops)} hops)"


def _node_sort_key(node: Mapping[str, Any]) -> tuple[int, str]:
    node_id = str(node.get("node_id", ""))
    try:
        return int(node_id, 16), node_id
    except ValueError:
        return -1, node_id


def format_ring(ring: Mapping[str, Any]) -> str:
    """One line per node in ring order, after a summary line."""
    listed = ring.get("nodes")
    nodes = [n for n in listed if isinstance(n, dict)] if isinstance(listed, list) else []
    nodes.sort(key=_node_sort_key)
    complete = "complete" if ring.get("complete") else "not complete (still joining or repairing)"
    lines = [f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, ring {complete}"]
    if nodes:
        lines.append(f"{'NODE-ID':<34}ADDRESS")
        for node in nodes:
            lines.append(f"{printable(node.get('node_id')):<34}{printable(node.get('address'))}")
    return "\n".join(lines)


def format_put(name: str, answer: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"stored {printable(name)}",
            f"  resource id: {printable(answer.get('resource_id'))}",
            f"  stored at:   {printable(answer.get('stored_at'))}",
            f"  replicas:    {_listing(answer.get('replicas')) or '(none)'}",
            f"  route:       {_route(answer)}",
        ]
    )


def format_registration(answer: Mapping[str, Any]) -> str:
    aor = printable(answer.get("aor"))
    lines = [
        f"{aor}: registered" if answer.get("found") else f"{aor}: not registered",
        f"  resource:    {printable(answer.get('resource'))} (SIP-REGISTRATION)",
        f"  resource id: {printable(answer.get('resource_id'))}",
        f"  stored at:   {printable(answer.get('stored_at'))}",
        f"  route:       {_route(answer)}",
    ]
    bindings = answer.get("bindings")
    for binding in bindings if isinstance(bindings, list) else []:
        if isinstance(binding, Mapping):
            lines.append(
                f"  contact:     {printable(binding.get('contact'))} "
                f"(expires in {printable(binding.get('expires'))} s, q={printable(binding.get('q'))}, "
                f"served by {printable(binding.get('served_by'))})"
            )
    return "\n".join(lines)


def format_get(name: str, answer: Mapping[str, Any]) -> str:
    if answer.get("kind") == "sip-registration":
        return format_registration(answer)
    if not answer.get("found"):
        return "\n".join(
            [
                f"{printable(name)}: not found",
                f"  resource id: {printable(answer.get('resource_id'))}",
                f"  asked:       {printable(answer.get('stored_at'))}",
                f"  route:       {_route(answer)}",
            ]
        )
    return "\n".join(
        [
            f"{printable(name)} = {printable(answer.get('value'))}",
            f"  resource id: {printable(answer.get('resource_id'))}",
            f"  stored at:   {printable(answer.get('stored_at'))}",
            f"  route:       {_route(answer)}",
        ]
    )


def format_lookup(name: str, answer: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"{printable(name)}",
            f"  resource id: {printable(answer.get('resource_id'))}",
            f"  responsible: {printable(answer.get('responsible'))}",
            f"  route:       {_route(answer)}",
        ]
    )


# Commands.


def _client(args: argparse.Namespace) -> AdminClient:
    api_url = getattr(args, "api", DEFAULT_API_URL)
    token_file = default_token_file(
        api_url, getattr(args, "data_dir", None), getattr(args, "token_file", None)
    )
    return AdminClient(api_url, token_file=token_file)


def _emit(args: argparse.Namespace, answer: Mapping[str, Any], human: Callable[[], str]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(answer, indent=2) + "\n")
    else:
        sys.stdout.write(human() + "\n")


def _run(
    args: argparse.Namespace,
    call: Callable[[AdminClient], dict[str, Any]],
    human: Callable[[dict[str, Any]], str],
) -> int:
    try:
        answer = call(_client(args))
    except AdminError as e:
        sys.stderr.write(f"p2psip: {e}\n")
        return 1
    _emit(args, answer, lambda: human(answer))
    return 0


def run_status(args: argparse.Namespace) -> int:
    return _run(args, AdminClient.status, format_status)


def run_ring(args: argparse.Namespace) -> int:
    return _run(args, AdminClient.ring, format_ring)


def run_put(args: argparse.Namespace) -> int:
    return _run(
        args,
        lambda client: client.put(args.name, args.value, args.lifetime),
        lambda answer: format_put(args.name, answer),
    )


def run_get(args: argparse.Namespace) -> int:
    """Like grep, exit 1 when nothing is stored under the name, so scripts can test it."""
    found: list[bool] = []

    def fetch(client: AdminClient) -> dict[str, Any]:
        answer = client.get(args.name, args.kind)
        found.append(bool(answer.get("found")))
        return answer

    status = _run(args, fetch, lambda answer: format_get(args.name, answer))
    return status or (0 if found and found[0] else 1)


def run_lookup(args: argparse.Namespace) -> int:
    """
    A SIP AOR: its registration and the route to it, as ``get`` answers it
    (exit 1 when nobody is registered); any other name: the responsible
    node and the route.
    """
    if args.name.lower().startswith(("sip:", "sips:")):
        found: list[bool] = []

        def fetch(client: AdminClient) -> dict[str, Any]:
            answer = client.get(args.name, "sip-registration")
            found.append(bool(answer.get("found")))
            return answer

        status = _run(args, fetch, format_registration)
        return status or (0 if found and found[0] else 1)
    return _run(
        args,
        lambda client: client.lookup(args.name),
        lambda answer: format_lookup(args.name, answer),
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the lifetime must be at least 1 second")
    return value


def register(subparsers: Subcommands) -> None:
    """Add status, ring, put, get and lookup to the ``p2psip`` command."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print the API's raw JSON answer")
    # Also accept --api after the subcommand; SUPPRESS keeps the top-level
    # value (and its $P2PSIP_API default) when it is not repeated here.
    output.add_argument("--api", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    for name in ("--data-dir", "--token-file"):
        output.add_argument(name, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    status = subparsers.add_parser(
        "status", parents=[output], help="show the node's status (neighbours, storage, ...)"
    )
    status.set_defaults(run=run_status)

    ring = subparsers.add_parser("ring", parents=[output], help="list the ring's nodes in order")
    ring.set_defaults(run=run_ring)

    put = subparsers.add_parser(
        "put", parents=[output], help="store VALUE under NAME in the overlay"
    )
    put.add_argument("name", metavar="NAME", help="resource name, e.g. greeting")
    put.add_argument("value", metavar="VALUE", help="the value to store (text)")
    put.add_argument(
        "--lifetime",
        type=_positive_int,
        default=None,
        metavar="SECONDS",
        help="how long the overlay keeps the value (the role's default if omitted)",
    )
    put.set_defaults(run=run_put)

    get = subparsers.add_parser(
        "get",
        parents=[output],
        help="fetch the value stored under NAME, or a SIP AOR's registration",
        description="Fetch what the overlay holds under NAME.  A SIP AOR (sip:alice@DOMAIN) "
        "fetches the user's registration: the phones registered and the super-nodes serving "
        "them (RFC 7904 SIP-REGISTRATION, stored under alice@DOMAIN); --kind data fetches a "
        "value `p2psip put` stored under the URI itself.  Exits 1 when nothing is found.",
    )
    get.add_argument("name", metavar="NAME")
    get.add_argument(
        "--kind",
        choices=("data", "sip-registration"),
        default=None,
        help="what to fetch (default: sip-registration for a sip: or sips: NAME, else data)",
    )
    get.set_defaults(run=run_get)

    lookup = subparsers.add_parser(
        "lookup",
        parents=[output],
        help="show which node is responsible for NAME, and the route; for a SIP AOR "
        "(sip:alice@DOMAIN) also its registration",
    )
    lookup.add_argument("name", metavar="NAME")
    lookup.set_defaults(run=run_lookup)
