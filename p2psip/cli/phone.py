"""
``p2psip register`` and ``p2psip call``: what a phone does, from the
command line, to test a thin client's SIP adaptor (or a super-node).

Both run a small SIP user agent (:class:`~p2psip.sip.user_agent.SimpleUserAgent`)
on a port of their own and send through ``--via`` (default: the thin
client's adaptor, ``udp:127.0.0.1:5062``):

* ``register AOR`` registers a contact for the user (``--contact``, or
  the command's own address, which is gone once it exits: useful only to
  see that registering works) and prints the bindings the registrar
  holds.
* ``call AOR`` places a signalling-only test call: INVITE, and on 2xx ACK
  and BYE at once; it prints the call set-up time and the outcome, and
  exits 1 when the call fails.

``--json`` prints one JSON object for scripts; a line on standard error
says what is awaited when an answer takes more than a second.  Failures
name the likely fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from p2psip.cli import Subcommands
from p2psip.sip.message import Response
from p2psip.sip.transaction import Hop
from p2psip.sip.transport import SipTransport
from p2psip.sip.uri import SipURI, parse_uri
from p2psip.sip.user_agent import CallFailed, SimpleUserAgent
from p2psip.util.reactor import as_udp_reactor

#: The thin client's SIP adaptor, where ``--via`` points unless told otherwise.
DEFAULT_VIA = "udp:127.0.0.1:5062"

#: What an error status most likely means here, and what to do about it.
HINTS = {
    401: "the adaptor asks for a password: give --password-file (the user's Digest password)",
    403: "refused: the client or super-node may hold no certificate for this user "
    "(p2psip enrol --user AOR --data-dir ITS-DATA-DIR), or the password is wrong",
    404: "no such user in the overlay's domain",
    407: "the proxy asks for a password: give --password-file",
    408: "nobody answered in time: is the callee's phone running?",
    480: "the user is not registered (no live binding in the overlay)",
    482: "a loop: check that --via is not the callee's own contact",
    483: "too many hops",
    503: "the overlay could not be reached: is the client attached? (p2psip status --api "
    "http://127.0.0.1:8088)",
}


def parse_via(text: str) -> Hop:
    """``udp:HOST:PORT`` or ``tcp:HOST:PORT``: where the requests go."""
    transport, _, rest = text.partition(":")
    host, _, port = rest.rpartition(":")
    if (
        transport.lower() not in ("udp", "tcp")
        or not host
        or not (port.isascii() and port.isdigit())
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not udp:HOST:PORT or tcp:HOST:PORT (e.g. {DEFAULT_VIA})"
        )
    number = int(port)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port {port} is out of range")
    return Hop(transport.upper(), host.strip("[]"), number)


def _aor(text: str) -> str:
    uri = parse_uri(text) if text.startswith(("sip:", "sips:")) else None
    if not isinstance(uri, SipURI) or uri.user is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a sip: AOR such as sip:alice@example.org"
        )
    return text


class _Progress:
    """After a second without an answer, one line a second on standard error."""

    def __init__(self, clock: IReactorTime, what: str, quiet: bool) -> None:
        self.clock = clock
        self.what = what
        self.quiet = quiet
        self.started = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(1.0, self._tick)

    def _tick(self) -> None:
        waited = self.clock.seconds() - self.started
        if not self.quiet:
            sys.stderr.write(f"... {self.what} ({waited:.0f} s)\n")
        self._call = self.clock.callLater(1.0, self._tick)

    def done(self) -> float:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return self.clock.seconds() - self.started


def _failure_answer(response: Response) -> dict[str, Any]:
    answer: dict[str, Any] = {"status": response.status, "reason": response.reason}
    warning = response.headers.get("Warning")
    if warning:
        answer["warning"] = warning
    hint = HINTS.get(response.status)
    if hint:
        answer["hint"] = hint
    return answer


def _password(args: argparse.Namespace) -> str | None:
    if not args.password_file:
        return None
    try:
        with open(args.password_file, encoding="utf-8") as handle:
            return handle.readline().strip()
    except OSError as error:
        raise SystemExit(f"p2psip: cannot read --password-file {args.password_file}: {error}")


async def _with_agent(
    reactor: Any,
    args: argparse.Namespace,
    aor: str,
    work: Callable[[SimpleUserAgent], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Start a user agent on a port of its own, run ``work`` with it, stop it."""
    via: Hop = args.via
    transport = SipTransport(as_udp_reactor(reactor))
    local = "127.0.0.1" if via.host in ("127.0.0.1", "localhost", "::1") else "0.0.0.0"
    description = (
        f"udp:0:interface={local}" if via.transport == "UDP" else f"tcp:0:interface={local}"
    )
    await transport.listen(description)
    if local == "0.0.0.0":
        transport.advertised_host = args.local_host
    contact = parse_uri(args.contact) if getattr(args, "contact", None) else None
    if contact is not None and not isinstance(contact, SipURI):
        raise SystemExit(f"p2psip: --contact {args.contact} is not a sip: URI")
    agent = SimpleUserAgent(aor, _password(args), transport, via, reactor, contact=contact)
    try:
        return await work(agent)
    finally:
        agent.stop()
        await transport.stop()


def _timeout(reactor: IReactorTime, d: defer.Deferred[Any], seconds: float) -> defer.Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def _run(
    args: argparse.Namespace,
    main: Callable[[Any], Coroutine[Any, Any, dict[str, Any]]],
    human: Callable[[dict[str, Any]], str],
) -> int:
    from twisted.internet.task import react

    result: dict[str, Any] = {}

    async def wrapped(reactor: Any) -> None:
        try:
            result.update(await main(reactor))
        except defer.TimeoutError:
            result.update(
                {
                    "callee": getattr(args, "callee", None),
                    "aor": getattr(args, "aor", None),
                    "outcome": "timeout",
                    "hint": f"no final answer within {args.timeout:g} s from {_via_text(args.via)}: "
                    "is the thin client (or super-node) running and listening there?",
                }
            )

    try:
        react(lambda reactor: defer.Deferred.fromCoroutine(wrapped(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            if isinstance(exit_.code, str):
                sys.stderr.write(exit_.code + "\n")
            if not result:
                return 1
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        sys.stdout.write(human(result) + "\n")
    return 0 if result.get("outcome") in ("registered", "answered") else 1


def _via_text(via: Hop) -> str:
    return f"{via.transport.lower()}:{via.host}:{via.port}"


# register --------------------------------------------------------------------------


def run_register(args: argparse.Namespace) -> int:
    async def main(reactor: Any) -> dict[str, Any]:
        async def work(agent: SimpleUserAgent) -> dict[str, Any]:
            progress = _Progress(
                reactor, f"waiting for {_via_text(args.via)} to answer the REGISTER", args.json
            )
            try:
                response = await _timeout(reactor, agent.register(args.expires), args.timeout)
            except CallFailed as failed:
                progress.done()
                return {"aor": args.aor, "outcome": "refused", **_failure_answer(failed.response)}
            seconds = progress.done()
            return {
                "aor": args.aor,
                "outcome": "registered",
                "status": response.status,
                "seconds": round(seconds, 3),
                "contact": str(agent.contact.uri),
                "bindings": response.headers.get_all("Contact"),
            }

        return await _with_agent(reactor, args, args.aor, work)

    return _run(args, main, _format_register)


def _format_register(result: dict[str, Any]) -> str:
    if result.get("outcome") == "registered":
        lines = [
            f"registered {result['aor']} in {result['seconds'] * 1000:.0f} ms",
            f"  contact:  {result['contact']}",
        ]
        for binding in result.get("bindings", []):
            lines.append(f"  binding:  {binding}")
        return "\n".join(lines)
    return _format_failure(f"registering {result.get('aor', '')}", result)


def _format_failure(what: str, result: dict[str, Any]) -> str:
    if result.get("outcome") == "timeout":
        return f"{what}: no answer; {result['hint']}"
    line = f"{what}: {result.get('status')} {result.get('reason')}"
    if result.get("warning"):
        line += f" ({result['warning']})"
    if result.get("hint"):
        line += f"\n  {result['hint']}"
    return line


# call -----------------------------------------------------------------------------------


def run_call(args: argparse.Namespace) -> int:
    async def main(reactor: Any) -> dict[str, Any]:
        async def work(agent: SimpleUserAgent) -> dict[str, Any]:
            progress = _Progress(reactor, f"calling {args.callee}, no final answer yet", args.json)
            try:
                dialog = await _timeout(reactor, agent.call(args.callee), args.timeout)
            except CallFailed as failed:
                seconds = progress.done()
                return {
                    "callee": args.callee,
                    "caller": args.caller,
                    "outcome": "failed",
                    "seconds": round(seconds, 3),
                    **_failure_answer(failed.response),
                }
            progress.done()
            try:
                bye = await _timeout(reactor, agent.hang_up(dialog), args.timeout)
                bye_status = bye.status
            except CallFailed as failed:
                bye_status = failed.response.status
            return {
                "callee": args.callee,
                "caller": args.caller,
                "outcome": "answered",
                "status": 200,
                "setup_ms": round(dialog.setup_seconds * 1000.0, 1),
                "route": [str(route.uri) for route in dialog.route_set],
                "bye_status": bye_status,
            }

        return await _with_agent(reactor, args, args.caller, work)

    return _run(args, main, _format_call)


def _format_call(result: dict[str, Any]) -> str:
    if result.get("outcome") == "answered":
        lines = [
            f"call to {result['callee']} answered: set up in {result['setup_ms']:.1f} ms, "
            f"hung up ({result['bye_status']} to BYE)"
        ]
        for hop in result.get("route", []):
            lines.append(f"  via {hop}")
        return "\n".join(lines)
    return _format_failure(f"call to {result.get('callee', '')}", result)


def register(subparsers: Subcommands) -> None:
    """Add register and call to the ``p2psip`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--via",
        type=parse_via,
        default=parse_via(DEFAULT_VIA),
        metavar="udp:HOST:PORT",
        help=f"the SIP adaptor or super-node to send through (default: {DEFAULT_VIA}, a thin "
        "client's adaptor); tcp:HOST:PORT for TCP",
    )
    common.add_argument(
        "--password-file",
        metavar="FILE",
        help="file whose first line is the user's Digest password, when the adaptor asks for one",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for a final answer (default: 30)",
    )
    common.add_argument(
        "--local-host",
        default="127.0.0.1",
        metavar="ADDR",
        help="this host's address as the adaptor reaches it, for a --via on another host",
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    reg = subparsers.add_parser(
        "register",
        parents=[common],
        help="register a user's contact through a SIP adaptor (a phone's REGISTER)",
        description="Send REGISTER for AOR through --via and print the bindings held.",
    )
    reg.add_argument("aor", type=_aor, metavar="AOR", help="the user, e.g. sip:alice@example.org")
    reg.add_argument(
        "--contact",
        metavar="URI",
        help="the contact to register (default: this command's own address, gone when it exits)",
    )
    reg.add_argument(
        "--expires", type=int, default=600, metavar="SECONDS", help="binding lifetime (default 600)"
    )
    reg.set_defaults(run=run_register)

    call = subparsers.add_parser(
        "call",
        parents=[common],
        help="place a signalling-only test call to AOR; report set-up time and outcome",
        description="INVITE AOR through --via; on 2xx send ACK and BYE at once.  Exit 1 when "
        "the call fails.",
    )
    call.add_argument("callee", type=_aor, metavar="AOR", help="the user to call")
    call.add_argument(
        "--from",
        dest="caller",
        type=_aor,
        required=True,
        metavar="AOR",
        help="the calling user, e.g. sip:alice@example.org",
    )
    call.set_defaults(run=run_call)
