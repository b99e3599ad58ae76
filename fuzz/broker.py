"""
Fuzz the mediator's side of the STUNT control protocol: the sans-IO
``Broker`` (``p2psip.nat.broker``) fed validated messages.

``validate_message`` only checks field types, so the broker must cope with
any message that passes it.  The input is a control stream (as
``fuzz.mediator`` decodes it); its messages reach a broker on a fake
clock in which ``alice`` and ``bob`` have logged in, the way
``p2psip.nat.mediator``'s control protocol delivers them: a ``relay-join``
on a link that has not logged in asks ``relay_token_valid`` (and the link
carries raw bytes from then on: it hears nothing more), anything else
goes to ``message_received``, and a link the broker closes is reported
closed and hears nothing more.  The clock moves a second per message and
an hour at the end, so every timer fires.

Nothing may raise, and everything the broker sends must be a valid
control frame (the client would drop the connection otherwise).

Two fields steer the harness and are removed before delivery: ``_link``
(0 alice, 1 bob, 2 and 3 fresh links that have not logged in; default 0)
picks the sender, and a ``session`` or ``token`` that is the empty string
stands for the newest session's id or relay token, which the fuzzer
cannot guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fuzz.common import HarnessFailure, instrumented, main

from twisted.internet.task import Clock

with instrumented():
    from p2psip.nat import broker as broker_module
    from p2psip.nat.control_auth import Secrets, compute_mac, derive_client_secret
    from p2psip.nat.control_protocol import (
        PROTOCOL_VERSION,
        FrameDecoder,
        StuntDecodeError,
        encode_frame,
    )

SECRET = b"fuzz secret"


class FakeLink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.reported = False
        self.raw = False
        self.sent: list[dict[str, Any]] = []

    def send(self, message: Any) -> None:
        try:
            frame = encode_frame(message)
            [decoded] = FrameDecoder().feed(frame)
        except (ValueError, StuntDecodeError) as e:
            raise HarnessFailure(f"the broker sent {self.name} an invalid frame: {e}") from None
        self.sent.append(decoded)

    def close(self) -> None:
        self.closed = True


def counter_bytes() -> Any:
    state = [0]

    def random_bytes(n: int) -> bytes:
        state[0] += 1
        return state[0].to_bytes(n, "big")

    return random_bytes


def login(broker: Any, name: str, address: str) -> FakeLink:
    link = FakeLink(name)
    broker.link_opened(link, (address, 5000))
    nonce = link.sent[-1]["nonce"]
    mac = compute_mac(derive_client_secret(SECRET, name), nonce, name)
    broker.message_received(link, {"type": "hello", "version": 1, "id": name, "mac": mac})
    if broker.client_id_of(link) != name:
        raise HarnessFailure(f"{name} could not log in")
    return link


def newest_session(broker: Any) -> Any:
    return list(broker.sessions.values())[-1] if broker.sessions else None


class Relays:
    """The mediator's relay bookkeeping: the first join waits, the second splices."""

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self.spliced: list[tuple[str, str]] = []


def deliver(broker: Any, relays: Relays, link: FakeLink, message: dict[str, Any]) -> None:
    session = newest_session(broker)
    if message.get("session") == "" and session is not None:
        message["session"] = session.session_id
    if message.get("token") == "" and session is not None and session.relay_token:
        message["token"] = session.relay_token
    if message["type"] == "relay-join" and broker.client_id_of(link) is None:
        link.raw = True
        session_id = message["session"]
        if message["version"] != PROTOCOL_VERSION or not broker.relay_token_valid(
            session_id, message["token"]
        ):
            link.close()
        elif session_id not in relays.waiting:
            relays.waiting.add(session_id)
        else:
            relays.waiting.discard(session_id)
            relays.spliced.append(broker.relay_parties(session_id))
            broker.relay_established(session_id)
        return
    broker.message_received(link, message)


def test_one_input(data: bytes) -> None:
    try:
        messages = FrameDecoder().feed(data)
    except StuntDecodeError:
        return
    clock = Clock()
    broker = broker_module.Broker(clock, Secrets(shared=SECRET), random_bytes=counter_bytes())
    links = [login(broker, "alice", "198.51.100.1"), login(broker, "bob", "198.51.100.2")]
    for number in (1, 2):
        stranger = FakeLink(f"stranger {number}")
        broker.link_opened(stranger, ("203.0.113.9", 6000 + number))
        links.append(stranger)
    relays = Relays()
    for message in messages:
        choice = message.pop("_link", 0)
        link = links[choice if isinstance(choice, int) and 0 <= choice < len(links) else 0]
        if not link.closed and not link.raw:
            deliver(broker, relays, link, message)
        for each in links:
            if each.closed and not each.reported:
                each.reported = True
                broker.link_closed(each)
        clock.advance(1)
    clock.advance(3600)
    for parties in relays.spliced:
        broker.relay_ended(*parties)
    broker.status()


def frames(*messages: dict[str, Any]) -> bytes:
    return b"".join(encode_frame(m) for m in messages)


def probed(link: int, local_ip: str, public: str, mapped: list[int]) -> dict[str, Any]:
    return {
        "type": "probed",
        "_link": link,
        "session": "",
        "local_ip": local_ip,
        "hole_port": 4003,
        "observations": [[4000 + i, public, port] for i, port in enumerate(mapped)],
    }


def seeds() -> Iterator[bytes]:
    connect = {"type": "connect", "ref": 1, "to": "bob", "kind": "tcp", "methods": []}
    eim = [4000, 4001, 4002, 4003]
    random = [16505, 30068, 2197, 43000]
    both_probed = [
        probed(0, "10.0.1.2", "198.51.100.1", eim),
        probed(1, "10.0.2.2", "198.51.100.2", random),
    ]
    public_alice = [  # alice is not behind a NAT: direct and the rest are worth a try
        probed(0, "198.51.100.1", "198.51.100.1", eim),
        probed(1, "10.0.2.2", "198.51.100.2", eim),
    ]

    def failed(method: str) -> list[dict[str, Any]]:
        return [{"type": "armed", "_link": side, "session": ""} for side in (0, 1)] + [
            {"type": "result", "_link": side, "session": "", "method": method, "ok": False}
            | {"detail": "timed out"}
            for side in (0, 1)
        ]

    yield frames({"type": "ping"}, {"type": "ping", "_link": 1})
    yield frames(connect, *both_probed)
    yield frames(
        connect,
        *public_alice,
        *failed("direct"),
        *public_alice,
        *failed("simultaneous-open"),
        *public_alice,
        *failed("low-ttl"),
        {"type": "relay-join", "_link": 2, "version": 1, "session": "", "token": ""},
        {"type": "relay-join", "_link": 3, "version": 1, "session": "", "token": ""},
    )
    yield frames(
        connect,
        *public_alice,
        {"type": "result", "session": "", "method": "direct", "ok": True, "detail": ""},
        {"type": "result", "_link": 1, "session": "", "method": "direct", "ok": True}
        | {"detail": ""},
    )
    yield frames(
        {"type": "connect", "ref": 2, "to": "alice", "kind": "udp", "methods": [], "_link": 1},
        {"type": "refuse", "session": "", "reason": "busy"},
    )
    yield frames({"type": "hello", "_link": 2, "version": 1, "id": "carol", "mac": "00"})


if __name__ == "__main__":
    main(test_one_input, seeds)
