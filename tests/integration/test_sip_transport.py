"""SIP transports over real loopback sockets (port 0), with transactions on top."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from p2psip.sip.message import Headers, Request, Response, SipURI, Via, make_response
from p2psip.sip.transaction import Hop, ServerTransaction, TransactionLayer, new_branch
from p2psip.sip.transport import SipTransport


def options_request(via: Via) -> Request:
    headers = Headers()
    headers.add("Via", str(via))
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:alice@example.org>;tag=a1")
    headers.add("To", "<sip:bob@example.org>")
    headers.add("Call-ID", new_branch() + "@127.0.0.1")
    headers.add("CSeq", "1 OPTIONS")
    return Request("OPTIONS", SipURI("example.org", "bob"), headers)


class Element:
    """A transport plus transaction layer whose TU answers 200 and records requests."""

    def __init__(self) -> None:
        self.transport = SipTransport(reactor)
        self.clock = Clock()  # transaction timers never fire: the test ends first
        self.layer = TransactionLayer(self.transport, self, self.clock)
        self.transport.receiver = self.layer
        self.requests: list[ServerTransaction] = []
        self.request_arrived: defer.Deferred[ServerTransaction] = defer.Deferred()

    def request_received(self, transaction: ServerTransaction) -> None:
        self.requests.append(transaction)
        transaction.respond(make_response(transaction.request, 200, to_tag="srv"))
        if not self.request_arrived.called:
            self.request_arrived.callback(transaction)

    def ack_received(self, request: Request, source: Hop) -> None:
        pass

    def stray_response_received(self, response: Response, source: Hop) -> None:
        pass

    def send(self, request: Request, target: Hop) -> defer.Deferred[Response]:
        final: defer.Deferred[Response] = defer.Deferred()

        def on_response(response: Response) -> None:
            if response.status >= 200 and not final.called:
                final.callback(response)

        self.layer.send_request(request, target, on_response)
        return final


class LoopbackTests(TestCase):
    """Requests and responses over 127.0.0.1."""

    @defer.inlineCallbacks
    def make_element(
        self, *listen: str
    ) -> defer.Generator[defer.Deferred[object], object, Element]:
        element = Element()
        self.addCleanup(element.transport.stop)
        for description in listen:
            yield element.transport.listen(description)
        return element

    @defer.inlineCallbacks
    def test_udp_round_trip_with_rport(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """An OPTIONS over UDP is answered; the server saw the client's real port in rport."""
        server = yield self.make_element("udp:0:interface=127.0.0.1")
        client = yield self.make_element("udp:0:interface=127.0.0.1")
        assert isinstance(server, Element) and isinstance(client, Element)
        local = client.transport.local_hop("UDP")
        target = server.transport.local_hop("UDP")
        assert local is not None and target is not None
        # Claim a wrong sent-by port, as a UA behind a NAT would: rport must fix it.
        via = Via("UDP", "127.0.0.1", 9, {"branch": new_branch(), "rport": None})
        response = yield client.send(options_request(via), target)
        assert isinstance(response, Response)
        self.assertEqual(response.status, 200)
        [transaction] = server.requests
        self.assertEqual(transaction.request.via.rport, local.port)
        self.assertEqual(transaction.source, local)

    @defer.inlineCallbacks
    def test_tcp_round_trip_and_connection_reuse(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """An OPTIONS over TCP is answered on its connection, and the server reaches the client over it too."""
        server = yield self.make_element("tcp:0:interface=127.0.0.1")
        client = yield self.make_element()
        assert isinstance(server, Element) and isinstance(client, Element)
        target = server.transport.local_hop("TCP")
        assert target is not None
        via = Via("TCP", "127.0.0.1", 9, {"branch": new_branch(), "rport": None})
        response = yield client.send(options_request(via), target)
        assert isinstance(response, Response)
        self.assertEqual(response.status, 200)
        [transaction] = server.requests
        source = transaction.source
        self.assertIn((source.host, source.port), server.transport.connections)
        back_via = Via("TCP", target.host, target.port, {"branch": new_branch()})
        reply = yield server.send(options_request(back_via), source)
        assert isinstance(reply, Response)
        self.assertEqual(reply.status, 200)
        self.assertEqual(len(client.requests), 1)
        self.assertEqual(len(server.transport.connections), 1)

    @defer.inlineCallbacks
    def test_tcp_connection_refused_gives_503(
        self,
    ) -> defer.Generator[defer.Deferred[object], object, None]:
        """A TCP target that refuses the connection ends the transaction with 503."""
        from p2psip.testing import free_port

        client = yield self.make_element()
        assert isinstance(client, Element)
        via = Via("TCP", "127.0.0.1", 9, {"branch": new_branch()})
        response = yield client.send(options_request(via), Hop("TCP", "127.0.0.1", free_port()))
        assert isinstance(response, Response)
        self.assertEqual(response.status, 503)


class _Client(Protocol):
    """A raw TCP client that notes when the server closes it."""

    def __init__(self) -> None:
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


class ConnectionLimitLoopbackTests(TestCase):
    """The per-source limit on a real SIP TCP listener."""

    @defer.inlineCallbacks
    def test_connections_past_the_per_source_limit_are_closed(self) -> Any:
        """From one address, the third connection to a listener allowing two is closed at once."""
        transport = SipTransport(reactor, tcp_connections_per_source=2)
        self.addCleanup(transport.stop)
        port = yield transport.listen("tcp:0:interface=127.0.0.1")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        clients = []
        for _ in range(3):
            client = _Client()
            yield connectProtocol(endpoint, client)
            clients.append(client)
        yield clients[2].closed
        self.assertEqual([c.closed.called for c in clients], [False, False, True])
        self.assertEqual(transport.metrics()["tcp_connections_refused"], 1)
        for client in clients[:2]:
            assert client.transport is not None
            client.transport.loseConnection()
            yield client.closed
