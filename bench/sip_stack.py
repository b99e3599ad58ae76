"""
Throughput of the SIP message layer, transactions and UDP transport.

Prints figures; asserts nothing.  Run with the project's virtualenv:

    .venv/bin/python bench/sip_stack.py [--seconds 2] [--loopback-requests 20000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock

from p2psip.sip.message import (
    NameAddress,
    Request,
    Response,
    SipStreamDecoder,
    SipURI,
    make_request,
    make_response,
    parse_message,
)
from p2psip.sip.transaction import Hop, ServerTransaction, TransactionLayer, new_branch
from p2psip.testing import shared_dir

REGISTER = (
    "REGISTER sip:example.org SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@example.org>;tag=8a7d6f\r\n'
    'To: "Alice" <sip:alice@example.org>\r\n'
    "Call-ID: 3f2a9c0e71b4@192.0.2.10\r\n"
    "CSeq: {cseq} REGISTER\r\n"
    "Contact: <sip:alice@192.0.2.10:5062;transport=udp>;expires=3600;q=0.8\r\n"
    "User-Agent: bench/1.0\r\n"
    "Expires: 3600\r\n"
    "Content-Length: 0\r\n\r\n"
)


def rate(label: str, seconds: float, step: Callable[[], object], unit: str = "msg") -> None:
    """Best of five runs: other load on the machine only ever makes a run slower."""
    best = float("inf")
    for _ in range(5):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds / 5
        while time.perf_counter() < deadline:
            for _ in range(50):
                step()
            count += 50
        best = min(best, (time.perf_counter() - start) / count)
    print(f"{label:<48} {1 / best:>10,.0f} {unit}/s  ({best * 1e6:.1f} us each, best of 5)")


def register_bytes(cseq: int = 1) -> bytes:
    return REGISTER.format(branch=new_branch(), cseq=cseq).encode()


class NullSender:
    def send_request(self, request: Request, target: Hop, on_error: Callable[[str], None]) -> None:
        pass

    def send_response(self, response: Response, source: Hop) -> None:
        pass


class AnsweringUser:
    def request_received(self, transaction: ServerTransaction) -> None:
        transaction.respond(make_response(transaction.request, 200, to_tag="t"))

    def ack_received(self, request: Request, source: Hop) -> None:
        pass

    def stray_response_received(self, response: Response, source: Hop) -> None:
        pass


def micro(seconds: float) -> None:
    data = register_bytes()
    print(f"REGISTER size {len(data)} bytes")
    rate("parse_message(REGISTER)", seconds, lambda: parse_message(data))
    message = parse_message(data)
    rate("to_bytes(REGISTER)", seconds, message.to_bytes)
    rate(
        "make_response(REGISTER, 200)",
        seconds,
        lambda: make_response(message, 200, to_tag="x").to_bytes(),
    )
    torture = shared_dir() / "testdata" / "sip-torture"
    for name in ("wsinv", "longreq"):
        path = torture / f"{name}.dat"
        if path.exists():
            raw = path.read_bytes()
            rate(
                f"parse_message({name}.dat, {len(raw)} bytes)",
                seconds,
                lambda raw=raw: parse_message(raw),
            )
    stream = data * 100
    decoder = SipStreamDecoder()
    rate(
        "SipStreamDecoder.feed (100 REGISTERs per feed)",
        seconds,
        lambda: decoder.feed(stream),
        unit="feed",
    )
    # The reactor as clock (not run here): its heap of delayed calls scales
    # like production, unlike task.Clock, which re-sorts its list per call.
    from twisted.internet import reactor

    source = Hop("UDP", "192.0.2.10", 5062)
    # With UDP every server transaction stays alive for Timer J (32 s), so
    # the live population grows and Python's cyclic GC gets expensive; the
    # "gc off" row shows how much of the cost that is.
    runs = (
        ("UDP", source, True),
        ("UDP, gc off", source, False),
        ("TCP", Hop("TCP", "192.0.2.10", 5062), True),
    )
    for label, hop, collect in runs:
        layer = TransactionLayer(NullSender(), AnsweringUser(), reactor)
        messages = [parse_message(register_bytes(i)) for i in range(20000)]
        if not collect:
            gc.disable()
        start = time.perf_counter()
        for message in messages:
            layer.message_received(message, hop)
        elapsed = time.perf_counter() - start
        gc.enable()
        print(
            f"{'server transactions REGISTER->200 over ' + label:<48} {len(messages) / elapsed:>10,.0f} txn/s  "
            f"({len(layer.server_transactions)} waiting for Timer J)"
        )
        for call in reactor.getDelayedCalls():
            call.cancel()
    clock = Clock()
    layer = TransactionLayer(NullSender(), AnsweringUser(), clock)
    for i in range(1000):
        layer.message_received(parse_message(register_bytes(i)), source)
    clock.advance(32)
    print(
        f"{'after Timer J (1000 on a fake clock)':<48} {len(layer.server_transactions):>10} alive, "
        f"{len(clock.getDelayedCalls())} delayed calls"
    )


def loopback(requests: int, window: int) -> None:
    from twisted.internet import reactor

    from p2psip.sip.transport import SipTransport

    server_transport = SipTransport(reactor)
    server = TransactionLayer(server_transport, AnsweringUser(), reactor)
    server_transport.receiver = server
    client_transport = SipTransport(reactor)
    done = {"ok": 0, "other": 0, "sent": 0}
    started = time.perf_counter()

    class ClientUser(AnsweringUser):
        pass

    client = TransactionLayer(client_transport, ClientUser(), reactor)
    client_transport.receiver = client

    alice = NameAddress(SipURI("example.org", "alice"), "Alice", {"tag": "8a7d6f"})
    contact = NameAddress(SipURI("127.0.0.1", "alice"), parameters={"expires": "3600"})

    def send_one() -> None:
        done["sent"] += 1
        request = make_request(
            "REGISTER",
            SipURI("example.org"),
            via=client_transport.make_via("UDP"),
            from_=alice,
            to=NameAddress(alice.uri),
            call_id="3f2a9c0e71b4@127.0.0.1",
            cseq_number=done["sent"],
            contact=contact,
        )
        client.send_request(request, target, on_response)

    def on_response(response: Response) -> None:
        if response.status < 200:
            return
        done["ok" if response.status == 200 else "other"] += 1
        if done["sent"] < requests:
            send_one()
        elif done["ok"] + done["other"] == requests:
            elapsed = time.perf_counter() - started
            print(
                f"{'UDP loopback REGISTER->200, window ' + str(window):<48} {requests / elapsed:>10,.0f} txn/s  "
                f"({done['other']} non-200 of {requests})"
            )
            reactor.stop()

    def start() -> None:
        nonlocal started
        started = time.perf_counter()
        for _ in range(min(window, requests)):
            send_one()

    server_port = server_transport.listen("udp:0:interface=127.0.0.1")
    client_transport.listen("udp:0:interface=127.0.0.1")
    target_hop: list[Hop] = []

    def listening(port: object) -> None:
        hop = server_transport.local_hop("UDP")
        assert hop is not None
        target_hop.append(hop)

    server_port.addCallback(listening)
    target = Hop("UDP", "127.0.0.1", 0)

    def begin() -> None:
        nonlocal target
        target = target_hop[0]
        start()

    reactor.callWhenRunning(begin)
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time per micro-benchmark")
    parser.add_argument("--loopback-requests", type=int, default=20000)
    parser.add_argument(
        "--window", type=int, default=50, help="requests in flight in the loopback test"
    )
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}")
    gc.collect()
    micro(args.seconds)
    loopback(args.loopback_requests, args.window)


if __name__ == "__main__":
    main()
