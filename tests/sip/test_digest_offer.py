"""Which Digest algorithms are offered: MD5 alone by default, SHA-256 per user or per known client."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.roles.ring_options import RingRoleOptions
from p2psip.sip.digest import DigestAuthenticator, Verdict, parse_digest_parameters
from p2psip.sip.digest_offer import (
    ClientRule,
    DigestOffer,
    parse_algorithms,
    parse_client_rule,
)
from p2psip.sip.location import OverlayLocationService
from p2psip.sip.message import Request, parse_message
from p2psip.sip.registrar import Registrar
from p2psip.sip.users import UsersFile, UsersFileError

from .memory_storage import MemoryOverlayStorage
from .test_digest import SECRET, nonce_from, signed

REALM = "example.org"
NOW = 1_764_000_000.0


def algorithms_of(challenges: list[str]) -> list[str]:
    return [parse_digest_parameters(c.partition(" ")[2])["algorithm"] for c in challenges]


class OfferTests(SynchronousTestCase):
    def test_default_is_md5_alone(self) -> None:
        """Without rules every client is offered MD5 only, the one list baresip, SIPp and Linphone all take."""
        self.assertEqual(
            DigestOffer().offered(None, "sip:alice@example.org", "baresip v1.0.0"), ("MD5",)
        )

    def test_client_rule(self) -> None:
        """A User-Agent containing the rule's text, in any case, gets the rule's list."""
        offer = DigestOffer(clients=(parse_client_rule("Linphone=SHA-256,MD5"),))
        self.assertEqual(offer.for_client("linphone-desktop/5.2 (belle-sip)"), ("SHA-256", "MD5"))
        self.assertEqual(offer.for_client("baresip v1.0.0"), ("MD5",))
        self.assertEqual(offer.for_client(None), ("MD5",))
        self.assertEqual(offer.anyone_may_use, frozenset({"SHA-256", "MD5"}))

    def test_parsers(self) -> None:
        """Lists are upper-cased; unknown names, repeats and empty rules are refused."""
        self.assertEqual(parse_algorithms("sha-256, md5"), ("SHA-256", "MD5"))
        for bad in ("", "SHA-512", "MD5,MD5"):
            self.assertRaises(ValueError, parse_algorithms, bad)
        self.assertEqual(parse_client_rule("My=Phone=MD5"), ClientRule("My=Phone", ("MD5",)))
        for bad in ("Linphone", "=MD5", "Linphone=SHA-1"):
            self.assertRaises(ValueError, parse_client_rule, bad)

    def test_role_default(self) -> None:
        """The peer's --sip-digest-algorithms is MD5 unless set; --sip-digest-client collects rules."""
        options = RingRoleOptions()
        options.parseOptions(
            [
                "--sip",
                "udp:5060",
                "--sip-trusted-network",
                "--sip-digest-client",
                "Linphone=SHA-256,MD5",
                "--data-dir",
                self.mktemp(),
            ]
        )
        assert options.config.sip is not None
        self.assertEqual(options.config.sip.digest_algorithms, ("MD5",))
        self.assertEqual(
            options.config.sip.digest_clients, (ClientRule("Linphone", ("SHA-256", "MD5")),)
        )


class UserOfferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.users = UsersFile.load(self.path, missing_ok=True)
        self.users.set_password("sip:alice@example.org", "wonderland")
        self.users.set_password("sip:carol@example.org", "secret", offer=("SHA-256",))
        self.users.save()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.authenticator = DigestAuthenticator(
            REALM, SECRET, self.clock, self.users, offers=self.users
        )

    def test_users_file_keeps_the_offer(self) -> None:
        """offer= is written, read back, kept by a password change and cleared with ()."""
        text = self.path.read_text()
        self.assertIn("offer=SHA-256", text)
        again = UsersFile.load(self.path)
        self.assertEqual(again.offer_for_aor("sip:carol@example.org"), ("SHA-256",))
        self.assertIsNone(again.offer_for_aor("sip:alice@example.org"))
        again.set_password("sip:carol@example.org", "new one")
        self.assertEqual(again.offer_for_user("carol", REALM), ("SHA-256",))
        again.set_password("sip:carol@example.org", "new one", offer=())
        self.assertIsNone(again.offer_for_user("carol", REALM))

    def test_bad_offer_in_file(self) -> None:
        """A broken offer= names the file and line."""
        self.path.write_text(self.path.read_text().replace("offer=SHA-256", "offer=SHA-1"))
        with self.assertRaises(UsersFileError) as raised:
            UsersFile.load(self.path)
        self.assertIn(f"{self.path}:", str(raised.exception))

    def test_per_user_challenges_and_answers(self) -> None:
        """Carol is offered SHA-256 alone and her MD5 answer is refused; alice gets and may use MD5."""
        carol = self.authenticator.challenges(aor="sip:carol@example.org")
        self.assertEqual(algorithms_of(carol), ["SHA-256"])
        nonce = nonce_from(carol[0])
        md5 = signed(nonce, username="carol", password="secret", algorithm="MD5")
        self.assertEqual(
            self.authenticator.verify(md5, "REGISTER", "sip:example.org"), Verdict.CHALLENGE
        )
        sha = signed(nonce, username="carol", password="secret", algorithm="SHA-256")
        self.assertEqual(
            self.authenticator.verify(sha, "REGISTER", "sip:example.org"), Verdict.ACCEPTED
        )
        alice = self.authenticator.challenges(aor="sip:alice@example.org", user_agent="baresip")
        self.assertEqual(algorithms_of(alice), ["MD5"])
        answer = signed(nonce_from(alice[0]), algorithm="MD5")
        self.assertEqual(
            self.authenticator.verify(answer, "REGISTER", "sip:example.org"), Verdict.ACCEPTED
        )

    def test_registrar_offers_by_user_agent(self) -> None:
        """A REGISTER from Linphone is challenged SHA-256 then MD5; one from baresip MD5 only."""
        authenticator = DigestAuthenticator(
            REALM,
            SECRET,
            self.clock,
            self.users,
            clients=(parse_client_rule("Linphone=SHA-256,MD5"),),
            offers=self.users,
        )
        storage = MemoryOverlayStorage(0x1234, self.clock)
        registrar = Registrar(
            REALM,
            OverlayLocationService(storage, self.clock),
            self.clock,
            authenticator,
            self.users,
        )
        self.addCleanup(registrar.stop)
        for agent, expected in (("Linphone/5.2", ["SHA-256", "MD5"]), ("baresip v1.0.0", ["MD5"])):
            request = parse_message(
                (
                    "REGISTER sip:example.org SIP/2.0\r\n"
                    "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKr1;rport\r\n"
                    "From: <sip:alice@example.org>;tag=r1\r\nTo: <sip:alice@example.org>\r\n"
                    "Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nMax-Forwards: 70\r\n"
                    f"User-Agent: {agent}\r\n"
                    "Contact: <sip:alice@192.0.2.7:5062>\r\n\r\n"
                ).encode()
            )
            assert isinstance(request, Request)
            response = self.successResultOf(registrar.register_received(request, None))
            self.assertEqual(response.status, 401)
            self.assertEqual(algorithms_of(response.headers.get_all("WWW-Authenticate")), expected)
