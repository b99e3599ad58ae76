"""
The messaging part on its own: what it delivers, forwards, answers and
drops, message by message, over recording links on a fake clock.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from p2psip.overlay import bodies
from p2psip.overlay.errors import NotConnected, NotResponsible, RequestFailed, RequestTimeout
from p2psip.overlay.identity import NodeIdentity
from p2psip.overlay.membership import Event
from p2psip.overlay.message import (
    Destination,
    ErrorCode,
    MessageCode,
    decode_message,
    peek_header,
    replace_header,
)
from p2psip.overlay.messaging import Reply, RequestRefused
from p2psip.util.ids import id_short
from tests.overlay.parts import CONFIG, MessengerUnderTest, sorted_identities

PING = bodies.PingReq().encode()


class MessagingTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Four peers in ring order; the messenger under test is the second.
        self.before, self.me, self.after, self.far = sorted_identities(4)
        self.node = MessengerUnderTest(self.me)
        self.node.topology.add_peers([self.before.node_id, self.after.node_id])
        self.node.membership.happened(Event.PEER_JOINED)
        self.peer = MessengerUnderTest(self.before)
        self.delivered: list[tuple[int, int]] = []

        def handler(link: object, message: object, signer: int) -> Reply:
            self.delivered.append((message.code, signer))  # type: ignore[attr-defined]
            return Reply(MessageCode.PING_ANS, bodies.PingAns(1, 2).encode())

        self.node.messenger.handle(MessageCode.PING_REQ, handler)

    def request_from_peer(
        self, destination: Destination, code: int = MessageCode.PING_REQ
    ) -> bytes:
        transaction_id = self.peer.messenger.transactions.new_transaction_id()
        return self.peer.messenger.encode(code, PING, (destination,), transaction_id)

    def test_delivers_what_it_owns_and_answers_along_the_link(self) -> None:
        """A request for an id we own reaches the handler; the answer goes back over its link."""
        link = self.node.link_to(self.before)
        request = self.request_from_peer(Destination.resource(self.me.node_id))
        self.node.messenger.message_received(link, request)
        self.assertEqual(self.delivered, [(MessageCode.PING_REQ, self.before.node_id)])
        [answer] = link.sent
        message = decode_message(answer)
        self.assertEqual(
            (message.code, message.header.transaction_id),
            (MessageCode.PING_ANS, peek_header(request).transaction_id),
        )
        self.assertEqual(message.header.destination_list, (Destination.node(self.before.node_id),))

    def test_request_signed_with_a_user_credential(self) -> None:
        """A message signed with a user credential carries its certificate and verifies as our Node-ID."""
        credential = self.before.self_signed_user("alice@example.org")
        data = self.peer.messenger.encode(
            MessageCode.PING_REQ,
            PING,
            (Destination.resource(self.me.node_id),),
            43,
            signer=credential,
        )
        message = decode_message(data)
        self.assertEqual(message.security.signature.identity, credential.signer_identity())
        self.assertEqual(
            [c.certificate for c in message.security.certificates], [credential.certificate_der]
        )
        self.node.messenger.message_received(self.node.link_to(self.before), data)
        self.assertEqual(self.delivered, [(MessageCode.PING_REQ, self.before.node_id)])

    def test_forwards_with_the_previous_hop_in_the_via_list(self) -> None:
        """A request for a successor's id leaves on its link with the sender appended to the via list."""
        incoming = self.node.link_to(self.before)
        onward = self.node.link_to(self.after)
        self.node.messenger.message_received(
            incoming, self.request_from_peer(Destination.resource(self.after.node_id))
        )
        self.assertEqual(self.delivered, [])
        [forwarded] = onward.sent
        header = peek_header(forwarded)
        self.assertEqual(header.via_list, (Destination.node(self.before.node_id),))
        self.assertEqual(header.ttl, self.node.messenger.config.initial_ttl - 1)

    def test_loops_and_unidentified_links_are_not_forwarded(self) -> None:
        """A message that already passed us, or comes over an unidentified link, is dropped and counted."""
        onward = self.node.link_to(self.after)
        stranger = self.node.link_to(None)
        data = self.request_from_peer(Destination.resource(self.after.node_id))
        self.node.messenger.message_received(stranger, data)
        self.assertEqual(self.node.counters["dropped_unidentified"], 1)
        looped = replace_header(
            data, evolve(peek_header(data), via_list=(Destination.node(self.me.node_id),))
        )
        self.node.messenger.message_received(self.node.link_to(self.before), looped)
        self.assertEqual(self.node.counters["loops_detected"], 1)
        self.assertEqual(onward.sent, [])

    def test_ttl_exceeded_is_answered(self) -> None:
        """A request whose TTL runs out here is answered with Error_TTL_Exceeded."""
        incoming = self.node.link_to(self.before)
        self.node.link_to(self.after)
        data = self.request_from_peer(Destination.resource(self.after.node_id))
        data = replace_header(data, evolve(peek_header(data), ttl=1))
        self.node.messenger.message_received(incoming, data)
        [error] = incoming.sent
        body = bodies.ErrorResponse.decode(decode_message(error).body)
        self.assertEqual(body.error_code, ErrorCode.TTL_EXCEEDED)

    def test_bad_signature_is_dropped(self) -> None:
        """A flipped bit in the signature makes the message vanish, counted, with no answer."""
        link = self.node.link_to(self.before)
        data = bytearray(self.request_from_peer(Destination.resource(self.me.node_id)))
        data[-5] ^= 0x01
        self.node.messenger.message_received(link, bytes(data))
        self.assertEqual((self.delivered, link.sent), ([], []))
        self.assertEqual(
            self.node.counters.get("bad_signatures", 0)
            + self.node.counters.get("malformed_messages", 0),
            1,
        )

    def test_handler_refusal_becomes_rfc_error(self) -> None:
        """A handler's RequestRefused is sent as an Error with its code; a missing handler as Invalid_Message."""

        def refuse(link: object, message: object, signer: int) -> Reply:
            raise RequestRefused(ErrorCode.FORBIDDEN, "no")

        self.node.messenger.handle(MessageCode.STAT_REQ, refuse)
        link = self.node.link_to(self.before)
        for code in (MessageCode.STAT_REQ, MessageCode.FIND_REQ):
            self.node.messenger.message_received(
                link, self.request_from_peer(Destination.node(self.me.node_id), code)
            )
        codes = [bodies.ErrorResponse.decode(decode_message(d).body).error_code for d in link.sent]
        self.assertEqual(codes, [ErrorCode.FORBIDDEN, ErrorCode.INVALID_MESSAGE])

    def test_one_handler_per_code(self) -> None:
        """Registering a second handler for a code is a programming error."""
        self.assertRaises(
            ValueError, self.node.messenger.handle, MessageCode.PING_REQ, lambda *a: None
        )

    def test_joining_node_answers_for_no_range(self) -> None:
        """While joining, a request for an id we would own is not delivered here."""
        joining = MessengerUnderTest(self.me)
        joining.membership.happened(Event.STOPPED)
        joining.membership.happened(Event.JOIN_STARTED)
        seen: list[int] = []
        joining.messenger.handle(
            MessageCode.FETCH_REQ, lambda link, message, signer: seen.append(signer)
        )
        link = joining.link_to(self.before)
        joining.messenger.message_received(
            link,
            self.request_from_peer(Destination.resource(self.me.node_id), MessageCode.FETCH_REQ),
        )
        self.assertEqual(seen, [])
        [error] = link.sent
        self.assertEqual(
            bodies.ErrorResponse.decode(decode_message(error).body).error_code, ErrorCode.NOT_FOUND
        )

    def test_rejoining_peer_is_reported(self) -> None:
        """A peer asking over its own link for the owner of its own Node-ID goes through the rejoin policy."""
        seen: list[int] = []

        def policy(peer: int, link: object) -> bool:
            seen.append(peer)
            return len(seen) == 1

        self.node.messenger.rejoin_policy = policy
        link = self.node.link_to(self.before)
        request = self.request_from_peer(Destination.node(self.before.node_id))
        self.node.messenger.message_received(link, request)
        self.assertEqual(seen, [self.before.node_id])
        # A copy of the same request is a replay: dropped before the policy hears of it.
        self.node.messenger.message_received(link, request)
        self.assertEqual(seen, [self.before.node_id])
        # A refusal (the Node-ID is alive elsewhere) is answered with Error_Forbidden.
        again = self.request_from_peer(Destination.node(self.before.node_id))
        self.node.messenger.message_received(link, again)
        codes = [bodies.ErrorResponse.decode(decode_message(d).body).error_code for d in link.sent]
        self.assertEqual(codes[-1], ErrorCode.FORBIDDEN)

    def test_request_answer_route_and_observers(self) -> None:
        """Our request's answer fires its Deferred with the route; observers hear the method and time."""
        observed: list[tuple[str, float, bool]] = []
        self.node.messenger.request_observers.append(lambda *args: observed.append(args))
        link = self.node.link_to(self.after)
        d = self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING
        )
        [sent] = link.sent
        request = decode_message(sent)
        answerer = MessengerUnderTest(self.after)
        self.node.clock.advance(0.25)
        reply = answerer.messenger.encode(
            MessageCode.PING_ANS,
            bodies.PingAns(7, 8).encode(),
            (Destination.node(self.me.node_id),),
            request.header.transaction_id,
        )
        self.node.messenger.message_received(link, reply)
        answer = self.successResultOf(d)
        self.assertEqual(
            (answer.responder, answer.route),
            (self.after.node_id, (self.me.node_id, self.after.node_id)),
        )
        self.assertEqual(observed, [("PING_REQ", 0.25, True)])

    def test_error_answer_and_timeout(self) -> None:
        """An Error answer fails the request with its code; no answer at all times out."""
        link = self.node.link_to(self.after)
        d = self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING
        )
        request = decode_message(link.sent[0])
        answerer = MessengerUnderTest(self.after)
        error = answerer.messenger.encode(
            MessageCode.ERROR,
            bodies.ErrorResponse(ErrorCode.FORBIDDEN, "go away").encode(),
            (Destination.node(self.me.node_id),),
            request.header.transaction_id,
        )
        self.node.messenger.message_received(link, error)
        failure = self.failureResultOf(d, RequestFailed)
        self.assertEqual(failure.value.error_code, ErrorCode.FORBIDDEN)
        d = self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING
        )
        self.node.clock.advance(self.node.messenger.config.request_timeout_seconds)
        self.failureResultOf(d, RequestTimeout)

    def test_no_route(self) -> None:
        """Without any usable link a request fails at once, naming the cause."""
        d = self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        )
        self.assertIn("no usable link", self.failureResultOf(d, NotConnected).getErrorMessage())


class SignerAndReplayTests(SynchronousTestCase):
    """The claimed sender must be the signer, and no request is handled twice."""

    def setUp(self) -> None:
        self.before, self.me, self.after, self.far = sorted_identities(4)
        self.node = MessengerUnderTest(self.me)
        self.node.topology.add_peers([self.before.node_id, self.after.node_id])
        self.node.membership.happened(Event.PEER_JOINED)
        self.handled: list[int] = []

        def handler(link: object, message: object, signer: int) -> Reply:
            self.handled.append(signer)
            return Reply(MessageCode.PING_ANS, bodies.PingAns(1, 2).encode())

        self.node.messenger.handle(MessageCode.PING_REQ, handler)

    def ping_from(self, identity: NodeIdentity, via: tuple[int, ...] = ()) -> bytes:
        sender = MessengerUnderTest(identity)
        data = sender.messenger.encode(
            MessageCode.PING_REQ,
            PING,
            (Destination.node(self.me.node_id),),
            sender.messenger.transactions.new_transaction_id(),
        )
        if via:
            header = peek_header(data)
            data = replace_header(
                data, evolve(header, via_list=tuple(Destination.node(v) for v in via))
            )
        return data

    def test_replayed_request_is_not_answered(self) -> None:
        """The same signed Ping a second time is dropped, counted and warned about once."""
        link = self.node.link_to(self.before)
        ping = self.ping_from(self.before)
        with capturedLogs() as events:
            for _ in range(3):
                self.node.messenger.message_received(link, ping)
        self.assertEqual((self.handled, len(link.sent)), ([self.before.node_id], 1))
        self.assertEqual(self.node.counters["replayed_requests"], 2)
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1)
        self.assertIn("replay", formatEvent(warnings[0]))

    def test_readdressed_replay_is_refused(self) -> None:
        """A copy with a new forwarding header (another via list, TTL, destination) is still a replay."""
        link = self.node.link_to(self.after)
        ping = self.ping_from(self.before, via=(self.before.node_id,))
        self.node.messenger.message_received(link, ping)
        header = peek_header(ping)
        readdressed = replace_header(
            ping,
            evolve(
                header,
                ttl=header.ttl - 7,
                destination_list=(Destination.resource(self.me.node_id),),
            ),
        )
        self.node.messenger.message_received(link, readdressed)
        self.assertEqual(self.handled, [self.before.node_id])
        self.assertEqual(self.node.counters["replayed_requests"], 1)

    def test_stale_transaction_id_is_refused(self) -> None:
        """A request whose transaction id is older than the window (or whose sender's clock is off) is dropped."""
        link = self.node.link_to(self.before)
        ping = self.ping_from(self.before)
        self.node.clock.advance(self.node.messenger.config.replay_window_seconds + 1)
        self.node.messenger.message_received(link, ping)
        self.assertEqual((self.handled, link.sent), ([], []))
        self.assertEqual(self.node.counters["stale_requests"], 1)

    def test_via_list_naming_someone_else_is_refused(self) -> None:
        """A request signed by one peer whose via list names another as its originator is dropped."""
        link = self.node.link_to(self.before)
        forged = self.ping_from(self.far, via=(self.after.node_id,))
        self.node.messenger.message_received(link, forged)
        self.assertEqual((self.handled, link.sent), ([], []))
        self.assertEqual(self.node.counters["signer_mismatches"], 1)

    def test_message_over_a_link_signed_by_another_peer(self) -> None:
        """With an empty via list the signer must be the link's peer: Error_Forbidden back over the link."""
        link = self.node.link_to(self.before)
        self.node.messenger.message_received(link, self.ping_from(self.far))
        self.assertEqual(self.handled, [])
        [error] = link.sent
        body = bodies.ErrorResponse.decode(decode_message(error).body)
        self.assertEqual(body.error_code, ErrorCode.FORBIDDEN)
        self.assertEqual(link.peer_id, self.before.node_id)

    def test_unidentified_link_takes_the_signer(self) -> None:
        """A request with an empty via list over a new link identifies it as its signer's."""
        link = self.node.link_to(None)
        self.node.messenger.message_received(link, self.ping_from(self.far))
        self.assertEqual((link.peer_id, self.handled), (self.far.node_id, [self.far.node_id]))

    def test_replayed_answer_is_dropped(self) -> None:
        """An answer that already ended its transaction is unmatched the second time."""
        link = self.node.link_to(self.after)
        answers: list[object] = []
        self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING
        ).addCallback(answers.append)
        request = decode_message(link.sent[0])
        answerer = MessengerUnderTest(self.after)
        reply = answerer.messenger.encode(
            MessageCode.PING_ANS,
            bodies.PingAns(7, 8).encode(),
            (Destination.node(self.me.node_id),),
            request.header.transaction_id,
        )
        self.node.messenger.message_received(link, reply)
        self.node.messenger.message_received(link, reply)
        self.assertEqual(len(answers), 1)
        self.assertEqual(self.node.counters["unmatched_answers"], 1)

    def test_answer_on_an_unidentified_link_must_match_a_request_sent_there(self) -> None:
        """An answer over a new link is taken only for a request that left on that very link."""
        onward = self.node.link_to(self.after)
        self.node.messenger.request(
            Destination.node(self.after.node_id), MessageCode.PING_REQ, PING
        )
        request = decode_message(onward.sent[0])
        answerer = MessengerUnderTest(self.after)
        reply = answerer.messenger.encode(
            MessageCode.PING_ANS,
            bodies.PingAns(7, 8).encode(),
            (Destination.node(self.me.node_id),),
            request.header.transaction_id,
        )
        stranger = self.node.link_to(None)
        self.node.messenger.message_received(stranger, reply)
        self.assertEqual(self.node.counters["unmatched_answers"], 1)
        self.assertIsNone(stranger.peer_id)
        self.assertEqual(len(self.node.messenger.transactions), 1)

    def test_resent_request_has_a_new_transaction_id(self) -> None:
        """A request sent again after its first hop failed is signed anew under another id."""
        first = self.node.link_to(self.after)
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        )
        [original] = first.sent
        first.closed = True
        self.node.links.remove(first)
        second = self.node.link_to(self.before)
        self.node.messenger.resend_after_failure(self.after.node_id)
        [resent] = second.sent
        self.assertNotEqual(
            peek_header(resent).transaction_id, peek_header(original).transaction_id
        )
        self.assertEqual(decode_message(resent).body, decode_message(original).body)
        self.assertEqual(self.node.counters["requests_resent"], 1)

    def test_resent_request_keeps_its_signer(self) -> None:
        """A request signed with a user credential is signed anew with that credential."""
        credential = self.me.self_signed_user("alice@example.org")
        first = self.node.link_to(self.after)
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.STORE_REQ, PING, signer=credential
        )
        first.closed = True
        self.node.links.remove(first)
        second = self.node.link_to(self.before)
        self.node.messenger.resend_after_failure(self.after.node_id)
        [resent] = second.sent
        self.assertEqual(
            decode_message(resent).security.signature.identity, credential.signer_identity()
        )


class AnswerFromOwnerTests(SynchronousTestCase):
    """An answer must come from a node that may own the target, as far as our tables tell."""

    def setUp(self) -> None:
        # Ring order: before, me, after, finger, (unknown), far.  We know our
        # one successor and predecessor and a finger; far owns the target.
        self.before, self.me, self.after, self.finger, _, self.far = sorted_identities(6)
        self.node = MessengerUnderTest(self.me)
        self.node.topology.successors = [self.after.node_id]
        self.node.topology.predecessors = [self.before.node_id]
        self.node.topology.set_finger(0, self.finger.node_id)
        self.node.membership.happened(Event.PEER_JOINED)

    def reply(
        self,
        identity: NodeIdentity,
        request: bytes,
        via: tuple[int, ...] = (),
        *,
        error: bool = False,
    ) -> bytes:
        """``identity``'s PingAns to ``request`` (or a Not_Found "no route" Error), via ``via``."""
        if error:
            code, body = MessageCode.ERROR, bodies.ErrorResponse(ErrorCode.NOT_FOUND, "no route")
        else:
            code, body = MessageCode.PING_ANS, bodies.PingAns(7, 8)
        data = MessengerUnderTest(identity).messenger.encode(
            code,
            body.encode(),
            (Destination.node(self.me.node_id),),
            peek_header(request).transaction_id,
        )
        header = peek_header(data)
        return replace_header(
            data, evolve(header, via_list=tuple(Destination.node(v) for v in via))
        )

    def answer(self, identity: NodeIdentity, request: bytes, via: tuple[int, ...] = ()) -> bytes:
        return self.reply(identity, request, via)

    def error(self, identity: NodeIdentity, request: bytes, via: tuple[int, ...] = ()) -> bytes:
        return self.reply(identity, request, via, error=True)

    def answered_elsewhere_after(self, *, error: bool) -> object:
        """
        A request for ``far`` whose first hop (the finger) replies for it
        (an answer, or an Error), and the owner's answer over the other
        first hop: what the requester got, with nothing before the owner's.
        """
        onward = self.node.link_to(self.finger)
        other = self.node.link_to(self.after)
        answers: list[object] = []
        self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        ).addCallback(answers.append)
        [request] = onward.sent
        self.node.messenger.message_received(onward, self.reply(self.finger, request, error=error))
        self.assertEqual(answers, [])
        [resent] = other.sent
        self.node.messenger.message_received(
            other, self.answer(self.far, resent, via=(self.far.node_id,))
        )
        [answer] = answers
        return answer

    def test_answer_from_a_node_before_the_target_is_refused_and_retried(self) -> None:
        """A hop that answers for a target beyond it is refused; the request goes round it once more."""
        answer = self.answered_elsewhere_after(error=False)
        self.assertEqual(self.node.counters["answers_not_from_owner"], 1)
        self.assertEqual(answer.responder, self.far.node_id)  # type: ignore[attr-defined]

    def test_without_another_route_the_refusal_is_the_result(self) -> None:
        """With no other first hop the request fails with NotResponsible, naming both nodes."""
        onward = self.node.link_to(self.finger)
        d = self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        )
        [request] = onward.sent
        self.node.messenger.message_received(onward, self.answer(self.finger, request))
        failure = self.failureResultOf(d, NotResponsible)
        self.assertIn(id_short(self.finger.node_id), failure.getErrorMessage())
        self.assertIn("cannot be responsible", failure.getErrorMessage())
        self.assertEqual(len(self.node.messenger.transactions), 0)

    def held_for_silent_finger(
        self, silent: bool = True
    ) -> tuple[Deferred[Any], list[int], NodeIdentity]:
        """
        A request for a target just past ``after``, answered by the next
        node beyond our finger (``owner``) while the finger has been silent
        for longer than a keepalive interval (or, ``silent=False``, was
        heard from a moment ago): the owner once the finger is gone.
        """
        _, _, _, _, owner, _ = sorted_identities(6)
        suspects: list[int] = []
        self.node.messenger.suspect_observer = suspects.append
        if silent:
            self.node.clock.advance(self.node.messenger.config.ping_interval_seconds + 1)
        onward = self.node.link_to(self.after)
        d = self.node.messenger.request(
            Destination.resource(self.after.node_id + 1), MessageCode.PING_REQ, PING
        )
        [request] = onward.sent
        self.node.messenger.message_received(
            onward, self.answer(owner, request, via=(owner.node_id,))
        )
        return d, suspects, owner

    def test_answer_behind_a_silent_peer_is_taken_once_it_proves_dead(self) -> None:
        """The true owner's answer, refused only for a peer that seems dead, is taken when it is."""
        d, suspects, owner = self.held_for_silent_finger()
        self.assertEqual(suspects, [self.finger.node_id])
        self.assertNoResult(d)
        self.node.topology.remove_peer(self.finger.node_id)
        self.node.messenger.release_held_answers(self.finger.node_id)
        self.assertEqual(self.successResultOf(d).responder, owner.node_id)
        self.assertEqual(len(self.node.messenger.transactions), 0)

    def test_held_answer_behind_a_live_peer_is_never_taken(self) -> None:
        """If the silent peer is alive after all, the held answer stays refused: the request times out."""
        d, _, _ = self.held_for_silent_finger()
        self.node.clock.advance(self.node.messenger.config.request_timeout_seconds)
        self.failureResultOf(d, RequestTimeout)
        self.node.messenger.release_held_answers(self.finger.node_id)
        self.assertEqual(len(self.node.messenger.transactions), 0)

    def test_answer_behind_a_peer_heard_lately_is_held_too(self) -> None:
        """
        Under churn the peer in between is most often one that died within
        the last keepalive interval: it is checked and the answer held even
        though it spoke a moment ago.
        """
        d, suspects, owner = self.held_for_silent_finger(silent=False)
        self.assertEqual(suspects, [self.finger.node_id])
        self.assertNoResult(d)
        self.node.topology.remove_peer(self.finger.node_id)
        self.node.messenger.release_held_answers(self.finger.node_id)
        self.assertEqual(self.successResultOf(d).responder, owner.node_id)

    def test_peer_in_between_answering_its_check_ends_the_request_refused(self) -> None:
        """
        When the peer in between answers its check it does lie between: the
        held answer is refused at once (not at the request's timeout), and
        a later release of that peer changes nothing.
        """
        d, _, owner = self.held_for_silent_finger(silent=False)
        self.node.messenger.refuse_held_answers(self.finger.node_id)
        failure = self.failureResultOf(d, NotResponsible)
        self.assertIn("is up", failure.getErrorMessage())
        self.assertIn(id_short(owner.node_id), failure.getErrorMessage())
        self.assertEqual(len(self.node.messenger.transactions), 0)
        self.node.messenger.release_held_answers(self.finger.node_id)
        self.assertEqual(len(self.node.messenger.transactions), 0)

    def test_error_answers_are_not_checked(self) -> None:
        """
        Any node on the path may refuse to carry a request: with no other
        first hop its Error fails the request as it is.
        """
        onward = self.node.link_to(self.finger)
        d = self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        )
        [request] = onward.sent
        self.node.messenger.message_received(onward, self.error(self.finger, request))
        self.assertEqual(
            self.failureResultOf(d, RequestFailed).value.error_code, ErrorCode.NOT_FOUND
        )

    def test_error_from_a_node_on_the_path_is_retried_once_elsewhere(self) -> None:
        """
        "No route" from a hop that cannot own the target (its tables lag a
        failure) sends the request once more over another first hop; the
        owner's answer there completes it.
        """
        answer = self.answered_elsewhere_after(error=True)
        self.assertEqual(self.node.counters["transit_errors_retried"], 1)
        self.assertEqual(answer.responder, self.far.node_id)  # type: ignore[attr-defined]

    def test_error_from_a_possible_owner_is_the_answer(self) -> None:
        """Not_Found from a node that may own the target is not retried: it is the answer."""
        onward = self.node.link_to(self.finger)
        other = self.node.link_to(self.after)
        d = self.node.messenger.request(
            Destination.resource(self.far.node_id), MessageCode.PING_REQ, PING
        )
        [request] = onward.sent
        self.node.messenger.message_received(
            onward, self.error(self.far, request, via=(self.far.node_id,))
        )
        self.failureResultOf(d, RequestFailed)
        self.assertEqual(other.sent, [])


class RequestLimitTests(SynchronousTestCase):
    """Per-link and per-signer token buckets bound the requests one source makes us handle."""

    def node_with(self, **limits: float) -> MessengerUnderTest:
        before, me = sorted_identities(2)
        node = MessengerUnderTest(me, evolve(CONFIG, **limits))
        node.topology.add_peers([before.node_id])
        node.membership.happened(Event.PEER_JOINED)
        node.messenger.handle(
            MessageCode.PING_REQ,
            lambda link, message, signer: Reply(
                MessageCode.PING_ANS, bodies.PingAns(1, 2).encode()
            ),
        )
        self.sender = MessengerUnderTest(before)
        return node

    def pings(self, node: MessengerUnderTest, count: int) -> list[bytes]:
        return [
            self.sender.messenger.encode(
                MessageCode.PING_REQ,
                PING,
                (Destination.node(node.node_id),),
                self.sender.messenger.transactions.new_transaction_id(),
            )
            for _ in range(count)
        ]

    def test_link_over_its_limit_is_dropped_unread(self) -> None:
        """Past its burst a link's requests are dropped before decoding, until the bucket refills."""
        node = self.node_with(
            requests_per_link_per_second=5,
            request_burst_per_link=5,
            requests_per_signer_per_second=0,
        )
        link = node.link_to(self.sender.identity)
        for data in self.pings(node, 8):
            node.messenger.message_received(link, data)
        self.assertEqual((len(link.sent), node.counters["requests_over_link_limit"]), (5, 3))
        node.clock.advance(1)
        for data in self.pings(node, 5):
            node.messenger.message_received(link, data)
        self.assertEqual(len(link.sent), 10)

    def test_signer_over_its_limit_gets_forbidden(self) -> None:
        """Past its burst a signer's requests are answered with Error_Forbidden."""
        node = self.node_with(
            requests_per_link_per_second=0,
            requests_per_signer_per_second=2,
            request_burst_per_signer=3,
        )
        link = node.link_to(self.sender.identity)
        for data in self.pings(node, 4):
            node.messenger.message_received(link, data)
        codes = [decode_message(d).code for d in link.sent]
        self.assertEqual(codes, [MessageCode.PING_ANS] * 3 + [MessageCode.ERROR])
        error = bodies.ErrorResponse.decode(decode_message(link.sent[-1]).body)
        self.assertEqual(error.error_code, ErrorCode.FORBIDDEN)
        self.assertEqual(node.counters["requests_over_signer_limit"], 1)

    def test_defaults_leave_room_for_a_hand_over(self) -> None:
        """The default limits take a burst of 1,500 requests from one neighbour without a refusal."""
        node = self.node_with()
        link = node.link_to(self.sender.identity)
        for data in self.pings(node, 1500):
            node.messenger.message_received(link, data)
        self.assertEqual(len(link.sent), 1500)
        self.assertNotIn("requests_over_signer_limit", node.counters)


class LinkClaimTests(SynchronousTestCase):
    """A request names a new link's peer only provisionally; the node is told to challenge it."""

    def test_request_names_a_link_unconfirmed(self) -> None:
        """A request over a new link files it unconfirmed and asks for a challenge; the challenge's answer must return there."""
        before, me = sorted_identities(2)
        node = MessengerUnderTest(me)
        claimed: list[object] = []
        node.messenger.link_claimed = claimed.append
        node.messenger.handle(
            MessageCode.PING_REQ,
            lambda link, message, signer: Reply(
                MessageCode.PING_ANS, bodies.PingAns(1, 2).encode()
            ),
        )
        sender = MessengerUnderTest(before)
        link = node.link_to(None)
        node.messenger.message_received(
            link,
            sender.messenger.encode(
                MessageCode.PING_REQ,
                PING,
                (Destination.node(node.node_id),),
                sender.messenger.transactions.new_transaction_id(),
            ),
        )
        self.assertEqual((claimed, link.peer_id), ([link], before.node_id))
        self.assertFalse(node.links.is_confirmed(link))
        # The challenge: its answer over any other link does not count.
        node.messenger.request(
            Destination.node(before.node_id), MessageCode.PING_REQ, PING, first_link=link
        )
        challenge = decode_message(link.sent[-1])
        answer = sender.messenger.encode(
            MessageCode.PING_ANS,
            bodies.PingAns(3, 4).encode(),
            (Destination.node(me.node_id),),
            challenge.header.transaction_id,
        )
        node.messenger.message_received(node.link_to(before), answer)
        self.assertEqual(node.counters["unmatched_answers"], 1)
