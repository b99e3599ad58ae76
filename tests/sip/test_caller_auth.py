"""
The proxy's 407: requests claiming a user of our domain must come from a
phone registered here, from another super-node of the ring, or carry
Proxy-Authorization for that user.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip.authorization import CredentialCheck
from p2psip.sip.digest import (
    ALGORITHMS,
    DigestAuthenticator,
    compute_ha1,
    compute_response,
    parse_digest_parameters,
)
from p2psip.sip.message import Request, Response
from p2psip.sip.proxy import NODE_PARAMETER
from p2psip.sip.registrar import Registrar
from p2psip.sip.request_limit import RequestRateLimit
from p2psip.sip.transaction import Hop

from .test_proxy import ADDRESS_A, ADDRESS_B, NODE_A, Node, ring_of_two

DOMAIN = "example.org"
PASSWORDS = {"alice": "wonderland", "bob": "builder"}
OUTSIDER = Hop("UDP", "198.51.100.10", 5070)
ALICE_PHONE = Hop("UDP", "192.0.2.7", 5062)
BOB_PHONE = Hop("UDP", "192.0.2.8", 5064)
#: Where node A's requests come from: its SIP address.
FROM_A = Hop("UDP", *ADDRESS_A)


class Accounts:
    """Alice and Bob, each owning the AOR of its name."""

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        password = PASSWORDS.get(username)
        if password is None or realm != DOMAIN:
            return None
        return compute_ha1(algorithm, username, realm, password)

    def aor_for(self, username: str, realm: str) -> str | None:
        return f"sip:{username}@{DOMAIN}" if username in PASSWORDS and realm == DOMAIN else None


class AuthNode(Node):
    """A super-node with Digest on: registrar and proxy share one credential check."""

    def make_registrar(self, node_id: int, clock: Clock) -> Registrar:
        accounts = Accounts()
        self.authenticator = DigestAuthenticator(
            DOMAIN, node_id.to_bytes(16, "big") * 2, clock, accounts, algorithms=ALGORITHMS
        )
        registrar = Registrar(DOMAIN, self.location, clock, self.authenticator, accounts)
        assert registrar.credentials is not None
        self.credentials: CredentialCheck = registrar.credentials
        return registrar

    def last_response(self) -> Response:
        return self.sender.responses[-1][0]

    def forwarded(self, method: str = "INVITE") -> list[tuple[Request, Hop]]:
        return [(r, hop) for r, hop in self.sender.requests if r.method == method]


def request_text(
    method: str = "INVITE",
    caller: str = "alice",
    callee: str = "bob",
    branch: str = "z9hG4bKc1",
    cseq: int = 1,
    sent_by: str = "198.51.100.10:5070",
    extra: tuple[str, ...] = (),
    to_tag: str = "",
    caller_domain: str = DOMAIN,
) -> bytes:
    lines = [
        f"{method} sip:{callee}@{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {sent_by};branch={branch};rport",
        f"From: <sip:{caller}@{caller_domain}>;tag=f1",
        f"To: <sip:{callee}@{DOMAIN}>{to_tag}",
        "Call-ID: call-1@198.51.100.10",
        f"CSeq: {cseq} {method}",
        "Contact: <sip:caller@198.51.100.10:5070>",
        "Max-Forwards: 70",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def proxy_authorization(
    challenge: Response, user: str, password: str, method: str = "INVITE", nc: int = 1
) -> str:
    """Proxy-Authorization answering the first challenge of a 407, as a phone computes it."""
    value = challenge.headers.get_all("Proxy-Authenticate")[0]
    params = parse_digest_parameters(value.partition(" ")[2])
    algorithm, realm, nonce = params["algorithm"], params["realm"], params["nonce"]
    uri = f"sip:bob@{DOMAIN}"
    ha1 = compute_ha1(algorithm, user, realm, password)
    count = f"{nc:08x}"
    digest = compute_response(algorithm, ha1, nonce, method, uri, "auth", count, "cn1")
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{digest}", algorithm={algorithm}, cnonce="cn1", nc={count}, qop=auth'
    )


def register_text(user: str, phone: Hop, authorization: str | None = None, cseq: int = 1) -> bytes:
    lines = [
        f"REGISTER sip:{DOMAIN} SIP/2.0",
        f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bKr{user}{cseq};rport",
        f"From: <sip:{user}@{DOMAIN}>;tag=r1",
        f"To: <sip:{user}@{DOMAIN}>",
        f"Call-ID: reg-{user}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
        f"Contact: <sip:{user}@{phone.host}:{phone.port}>",
        "Expires: 600",
    ]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class CallerAuthenticationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock, self.a, self.b = ring_of_two(self, AuthNode)

    def register(self, node: AuthNode, user: str, phone: Hop) -> None:
        node.receive(register_text(user, phone), phone)
        challenge = node.last_response()
        self.assertEqual(challenge.status, 401)
        value = challenge.headers.get_all("WWW-Authenticate")[0]
        params = parse_digest_parameters(value.partition(" ")[2])
        ha1 = compute_ha1(params["algorithm"], user, DOMAIN, PASSWORDS[user])
        digest = compute_response(
            params["algorithm"],
            ha1,
            params["nonce"],
            "REGISTER",
            f"sip:{DOMAIN}",
            "auth",
            "00000001",
            "c",
        )
        authorization = (
            f'Digest username="{user}", realm="{DOMAIN}", nonce="{params["nonce"]}", '
            f'uri="sip:{DOMAIN}", response="{digest}", algorithm={params["algorithm"]}, '
            'cnonce="c", nc=00000001, qop=auth'
        )
        node.receive(register_text(user, phone, authorization, cseq=2), phone)
        self.assertEqual(node.last_response().status, 200)

    def challenge_from_outside(self, node: AuthNode) -> Response:
        node.receive(request_text(), OUTSIDER)
        response = node.last_response()
        self.assertEqual(response.status, 407)
        return response

    def test_outsider_claiming_our_user_is_challenged(self) -> None:
        """An INVITE from alice@our-domain from outside gets 407, one challenge per algorithm, qop=auth."""
        self.register(self.a, "bob", BOB_PHONE)
        response = self.challenge_from_outside(self.a)
        challenges = response.headers.get_all("Proxy-Authenticate")
        self.assertEqual(len(challenges), 2)
        for value in challenges:
            params = parse_digest_parameters(value.partition(" ")[2])
            self.assertEqual((params["realm"], params["qop"]), (DOMAIN, "auth"))
        self.assertEqual(self.a.forwarded(), [])

    def test_valid_credentials_are_forwarded_without_ours(self) -> None:
        """With Proxy-Authorization for alice the INVITE is forwarded, minus our header, others' kept."""
        self.register(self.a, "bob", BOB_PHONE)
        challenge = self.challenge_from_outside(self.a)
        other = (
            'Digest username="alice", realm="elsewhere.example", nonce="n", uri="x", response="r"'
        )
        self.a.receive(
            request_text(
                branch="z9hG4bKc2",
                cseq=2,
                extra=(
                    "Proxy-Authorization: " + proxy_authorization(challenge, "alice", "wonderland"),
                    "Proxy-Authorization: " + other,
                ),
            ),
            OUTSIDER,
        )
        [(invite, hop)] = self.a.forwarded()
        self.assertEqual(hop, BOB_PHONE)
        self.assertEqual(invite.headers.get_all("Proxy-Authorization"), [other])

    def test_another_users_credentials_are_forbidden(self) -> None:
        """Bob's valid credentials do not let him call as alice: 403, counted as a failure."""
        challenge = self.challenge_from_outside(self.a)
        self.a.receive(
            request_text(
                branch="z9hG4bKc2",
                cseq=2,
                extra=("Proxy-Authorization: " + proxy_authorization(challenge, "bob", "builder"),),
            ),
            OUTSIDER,
        )
        self.assertEqual(self.a.last_response().status, 403)
        self.assertEqual(self.a.forwarded(), [])
        self.assertEqual(self.a.credentials.throttle.tracked(), 2)

    def test_wrong_passwords_are_throttled(self) -> None:
        """Wrong passwords get 403; after the per-source limit guesses are refused unchecked."""
        throttle = self.a.credentials.throttle
        challenge = self.challenge_from_outside(self.a)
        for number in range(throttle.failures_per_source + 3):
            self.a.receive(
                request_text(
                    branch=f"z9hG4bKguess{number}",
                    cseq=number + 2,
                    extra=(
                        "Proxy-Authorization: "
                        + proxy_authorization(challenge, "alice", f"guess{number}", nc=number + 1),
                    ),
                ),
                OUTSIDER,
            )
            self.assertEqual(self.a.last_response().status, 403)
        self.assertEqual(throttle.throttled, 3)

    def test_stale_nonce(self) -> None:
        """The right password with an expired nonce gets a fresh 407 with stale=TRUE."""
        challenge = self.challenge_from_outside(self.a)
        self.clock.advance(400)
        self.a.receive(
            request_text(
                branch="z9hG4bKc2",
                cseq=2,
                extra=(
                    "Proxy-Authorization: " + proxy_authorization(challenge, "alice", "wonderland"),
                ),
            ),
            OUTSIDER,
        )
        response = self.a.last_response()
        self.assertEqual(response.status, 407)
        self.assertIn("stale=TRUE", response.headers.get("Proxy-Authenticate") or "")

    def test_registered_phone_is_not_challenged(self) -> None:
        """Alice's INVITE over the flow her phone registered on goes through unchallenged."""
        self.register(self.a, "alice", ALICE_PHONE)
        self.register(self.a, "bob", BOB_PHONE)
        self.a.receive(request_text(sent_by="192.0.2.7:5062"), ALICE_PHONE)
        [(_, hop)] = self.a.forwarded()
        self.assertEqual(hop, BOB_PHONE)

    def test_another_users_flow_is_challenged(self) -> None:
        """Bob's phone's flow does not vouch for a request From alice."""
        self.register(self.a, "bob", BOB_PHONE)
        self.a.receive(request_text(callee="alice", sent_by="192.0.2.8:5064"), BOB_PHONE)
        self.assertEqual(self.a.last_response().status, 407)

    def test_other_domains_and_dialogs_are_not_challenged(self) -> None:
        """From another domain, or inside a dialog (To tag), nothing is asked for."""
        self.a.receive(request_text(caller_domain="elsewhere.example"), OUTSIDER)
        self.assertEqual(self.a.last_response().status, 480)
        self.a.receive(request_text("BYE", branch="z9hG4bKbye", to_tag=";tag=t"), OUTSIDER)
        self.assertNotEqual(self.a.last_response().status, 407)

    def test_ack_and_cancel_are_never_challenged(self) -> None:
        """CANCEL gets its 200/481 and an ACK no 407 (RFC 3261 s22.1)."""
        self.a.receive(request_text("CANCEL", branch="z9hG4bKnone"), OUTSIDER)
        self.assertEqual(self.a.last_response().status, 481)
        before = len(self.a.sender.responses)
        self.a.receive(request_text("ACK", branch="z9hG4bKack", to_tag=";tag=t"), OUTSIDER)
        self.assertEqual(len(self.a.sender.responses), before)

    def test_message_and_subscribe_are_challenged(self) -> None:
        """Every out-of-dialog method claiming our domain is, not only INVITE."""
        for number, method in enumerate(("MESSAGE", "SUBSCRIBE", "OPTIONS", "REFER")):
            self.a.receive(request_text(method, branch=f"z9hG4bKm{number}"), OUTSIDER)
            self.assertEqual(self.a.last_response().status, 407, method)

    def test_ring_member_is_trusted(self) -> None:
        """A authenticates alice and forwards to B, which serves bob: B asks nothing more."""
        self.register(self.b, "bob", BOB_PHONE)
        challenge = self.challenge_from_outside(self.a)
        self.a.receive(
            request_text(
                branch="z9hG4bKc2",
                cseq=2,
                extra=(
                    "Proxy-Authorization: " + proxy_authorization(challenge, "alice", "wonderland"),
                ),
            ),
            OUTSIDER,
        )
        [(invite, hop)] = self.a.forwarded()
        self.assertEqual(hop, Hop("UDP", *ADDRESS_B))
        self.b.receive(invite.to_bytes(), FROM_A)
        [(delivered, hop)] = self.b.forwarded()
        self.assertEqual(hop, BOB_PHONE)
        self.assertEqual(delivered.headers.get_all("Proxy-Authorization"), [])

    def test_ring_member_is_not_rate_limited(self) -> None:
        """Once B has checked that A is a super-node, A's requests skip B's per-source limit."""
        self.register(self.a, "alice", ALICE_PHONE)
        self.register(self.b, "bob", BOB_PHONE)
        limit = RequestRateLimit(self.clock, requests_per_second=1, burst=1)
        self.b.proxy.rate_limit = limit
        for number in range(5):
            self.a.receive(
                request_text("MESSAGE", branch=f"z9hG4bKm{number}", sent_by="192.0.2.7:5062"),
                ALICE_PHONE,
            )
        for message, _ in self.a.forwarded("MESSAGE"):
            self.b.receive(message.to_bytes(), FROM_A)
        self.assertEqual(len(self.b.forwarded("MESSAGE")), 5)
        self.assertEqual(limit.refused, 0)

    def test_message_between_super_nodes_carries_record_route(self) -> None:
        """A MESSAGE forwarded to another super-node carries A's Record-Route, so B trusts it."""
        self.register(self.a, "alice", ALICE_PHONE)
        self.register(self.b, "bob", BOB_PHONE)
        self.a.receive(request_text("MESSAGE", sent_by="192.0.2.7:5062"), ALICE_PHONE)
        [(message, _)] = self.a.forwarded("MESSAGE")
        self.assertIn(f"{NODE_PARAMETER}={NODE_A:032x}", message.headers.get("Record-Route") or "")
        self.b.receive(message.to_bytes(), FROM_A)
        [(_, hop)] = self.b.forwarded("MESSAGE")
        self.assertEqual(hop, BOB_PHONE)

    def test_forged_record_route_is_challenged(self) -> None:
        """A Record-Route naming A from any other address is a stranger's: 407."""
        self.register(self.b, "bob", BOB_PHONE)
        forged = (
            f"Record-Route: <sip:{ADDRESS_A[0]}:{ADDRESS_A[1]};lr;{NODE_PARAMETER}={NODE_A:032x}>"
        )
        self.b.receive(request_text(extra=(forged,)), OUTSIDER)
        self.assertEqual(self.b.last_response().status, 407)
        wrong_address = (
            f"Record-Route: <sip:{OUTSIDER.host}:5070;lr;{NODE_PARAMETER}={NODE_A:032x}>"
        )
        self.b.receive(request_text(branch="z9hG4bKc3", extra=(wrong_address,)), OUTSIDER)
        self.assertEqual(self.b.last_response().status, 407)
        self.assertEqual(self.b.forwarded(), [])

    def test_stream_proven_to_be_with_the_node_is_trusted(self) -> None:
        """A Record-Route naming A over a stream proven to be with A (a mediated one) is A's."""
        self.register(self.b, "bob", BOB_PHONE)
        mediated = Hop("TCP", "203.0.113.5", 40001)
        self.b.proxy.node_of_source = lambda source: NODE_A if source == mediated else None
        record_route = (
            f"Record-Route: <sip:{ADDRESS_A[0]}:{ADDRESS_A[1]};lr;{NODE_PARAMETER}={NODE_A:032x}>"
        )
        self.b.receive(request_text(extra=(record_route,)), mediated)
        [(_, hop)] = self.b.forwarded()
        self.assertEqual(hop, BOB_PHONE)
        # The same Record-Route from any other source is still a stranger's.
        self.b.receive(request_text(branch="z9hG4bKc4", extra=(record_route,)), OUTSIDER)
        self.assertEqual(self.b.last_response().status, 407)

    def test_trusted_network_asks_nothing(self) -> None:
        """Without authentication (no credential check) nobody is challenged."""
        self.a.proxy.credentials = None
        self.a.receive(request_text(), OUTSIDER)
        self.assertEqual(self.a.last_response().status, 480)
