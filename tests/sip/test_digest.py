"""Tests for Digest challenges, credential parsing and verification."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from p2psip.sip import digest
from p2psip.sip.digest import (
    DigestAuthenticator,
    DigestCredentials,
    DigestParseError,
    Verdict,
    compute_ha1,
    compute_response,
    parse_authorization,
    parse_digest_parameters,
)

REALM = "example.org"
SECRET = b"0123456789abcdef0123456789abcdef"
REQUEST_URI = "sip:example.org"


class FakeUsers:
    """An HA1 source holding alice's password and counting lookups."""

    def __init__(self) -> None:
        self.lookups: list[tuple[str, str, str]] = []
        self.stored = {
            ("alice", REALM, algorithm): compute_ha1(algorithm, "alice", REALM, "wonderland")
            for algorithm in digest.ALGORITHMS
        }

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        self.lookups.append((username, realm, algorithm))
        return self.stored.get((username, realm, algorithm))


def nonce_from(challenge: str) -> str:
    params = parse_digest_parameters(challenge.partition(" ")[2])
    return params["nonce"]


def signed(
    nonce: str,
    username: str = "alice",
    password: str = "wonderland",
    algorithm: str = "SHA-256",
    nc: str = "00000001",
    uri: str = REQUEST_URI,
    method: str = "REGISTER",
) -> DigestCredentials:
    ha1 = compute_ha1(algorithm, username, REALM, password)
    response = compute_response(algorithm, ha1, nonce, method, uri, "auth", nc, "c0ffee")
    return DigestCredentials(
        username=username,
        realm=REALM,
        nonce=nonce,
        uri=uri,
        response=response,
        algorithm=algorithm,
        qop="auth",
        nc=nc,
        cnonce="c0ffee",
        opaque=None,
    )


class VectorTests(SynchronousTestCase):
    def test_rfc2617_example(self) -> None:
        """The RFC 2617 section 3.5 MD5 example gives its published response."""
        ha1 = compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
        response = compute_response(
            "MD5",
            ha1,
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "GET",
            "/dir/index.html",
            "auth",
            "00000001",
            "0a4f113b",
        )
        self.assertEqual(response, "6629fae49393a05397450978507c4ef1")

    def test_rfc7616_sha256_example(self) -> None:
        """The RFC 7616 section 3.9.1 SHA-256 example gives its published response."""
        ha1 = compute_ha1("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life")
        response = compute_response(
            "SHA-256",
            ha1,
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "GET",
            "/dir/index.html",
            "auth",
            "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        )
        self.assertEqual(
            response, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        )


class ParseTests(SynchronousTestCase):
    def test_full_header(self) -> None:
        """Quoted and token values, any case of names, land in the right fields."""
        credentials = parse_authorization(
            'Digest USERNAME="alice", realm="example.org", nonce="abc", '
            'uri="sip:example.org", response="0f", algorithm=sha-256, '
            'qop=auth, nc=00000001, cnonce="x", opaque="o"'
        )
        self.assertEqual(
            (
                credentials.username,
                credentials.algorithm,
                credentials.qop,
                credentials.nc,
                credentials.opaque,
            ),
            ("alice", "sha-256", "auth", "00000001", "o"),
        )

    def test_commas_and_escapes_inside_quotes(self) -> None:
        """A comma or an escaped quote inside a quoted string belongs to the value."""
        params = parse_digest_parameters('username="a, \\"b\\"", realm="r"')
        self.assertEqual(params, {"username": 'a, "b"', "realm": "r"})

    def test_missing_fields_rejected(self) -> None:
        """Credentials without a response are a parse error naming it."""
        error = self.assertRaises(
            DigestParseError,
            parse_authorization,
            'Digest username="a", realm="r", nonce="n", uri="u"',
        )
        self.assertIn("response", str(error))

    def test_other_scheme_rejected(self) -> None:
        """Basic credentials are not Digest credentials."""
        self.assertRaises(DigestParseError, parse_authorization, "Basic YWxhZGRpbjpvcGVuc2VzYW1l")

    def test_hostile_inputs(self) -> None:
        """Unterminated quotes, duplicates, floods and junk are parse errors."""
        for hostile in [
            'Digest username="alice',
            'Digest username="a", username="b"',
            "Digest username",
            "Digest =x",
            'Digest username="a" realm="b"',
            "Digest " + ", ".join(f"p{i}=v" for i in range(100)),
            "Digest username=" + "a" * 10000,
            'Digest a="\\',
            "Digest a=,",
        ]:
            self.assertRaises(DigestParseError, parse_authorization, hostile)

    @given(st.text(max_size=300))
    def test_random_text_only_parse_error(self, text: str) -> None:
        """Arbitrary text either parses or raises DigestParseError, nothing else."""
        try:
            parse_authorization("Digest " + text)
        except DigestParseError:
            pass

    @given(
        st.dictionaries(
            st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
            st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
            max_size=10,
        )
    )
    def test_quoted_round_trip(self, params: dict[str, str]) -> None:
        """Any values written as escaped quoted strings parse back unchanged."""
        text = ", ".join(
            '{}="{}"'.format(name, value.replace("\\", "\\\\").replace('"', '\\"'))
            for name, value in params.items()
        )
        self.assertEqual(parse_digest_parameters(text), params)


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.users = FakeUsers()
        self.authenticator = DigestAuthenticator(
            REALM, SECRET, self.clock, self.users, algorithms=digest.ALGORITHMS
        )

    def nonce(self) -> str:
        return nonce_from(self.authenticator.challenges()[0])

    def test_challenge_offers_sha256_then_md5(self) -> None:
        """The challenge lists SHA-256 first, then MD5, both with qop=auth and the realm."""
        first, second = self.authenticator.challenges()
        self.assertIn("algorithm=SHA-256", first)
        self.assertIn("algorithm=MD5", second)
        for challenge in (first, second):
            self.assertIn('realm="example.org"', challenge)
            self.assertIn('qop="auth"', challenge)
            self.assertNotIn("stale", challenge)
        self.assertIn("stale=TRUE", self.authenticator.challenges(stale=True)[0])

    def test_right_password_accepted(self) -> None:
        """Correct SHA-256 and MD5 credentials with a fresh nonce are accepted."""
        for algorithm in ("SHA-256", "MD5"):
            verdict = self.authenticator.verify(
                signed(self.nonce(), algorithm=algorithm), "REGISTER", REQUEST_URI
            )
            self.assertEqual(verdict, Verdict.ACCEPTED)

    def test_wrong_password_rejected(self) -> None:
        """A wrong password is rejected."""
        credentials = signed(self.nonce(), password="guess")
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.REJECTED
        )

    def test_unknown_user_same_as_wrong_password(self) -> None:
        """An unknown user gets the same verdict, after the same lookup, as a wrong password."""
        unknown = self.authenticator.verify(
            signed(self.nonce(), username="mallory"), "REGISTER", REQUEST_URI
        )
        wrong = self.authenticator.verify(
            signed(self.nonce(), password="guess"), "REGISTER", REQUEST_URI
        )
        self.assertEqual((unknown, wrong), (Verdict.REJECTED, Verdict.REJECTED))
        self.assertEqual(len(self.users.lookups), 2)

    def test_unknown_user_hashes_as_much(self) -> None:
        """Checking an unknown user computes exactly as many hashes as a known one."""
        calls: list[str] = []
        original = digest.digest_hash

        def counting(algorithm: str, text: str) -> str:
            calls.append(algorithm)
            return original(algorithm, text)

        unknown, known = signed(self.nonce(), username="mallory"), signed(self.nonce())
        self.patch(digest, "digest_hash", counting)
        self.authenticator.verify(unknown, "REGISTER", REQUEST_URI)
        unknown_calls = len(calls)
        del calls[:]
        self.authenticator.verify(known, "REGISTER", REQUEST_URI)
        self.assertEqual(unknown_calls, len(calls))

    def test_expired_nonce_is_stale(self) -> None:
        """Right password with an expired nonce asks for a new nonce (stale)."""
        nonce = self.nonce()
        self.clock.advance(digest.NONCE_LIFETIME_SECONDS + 1)
        self.assertEqual(
            self.authenticator.verify(signed(nonce), "REGISTER", REQUEST_URI), Verdict.STALE
        )

    def test_expired_nonce_wrong_password_rejected(self) -> None:
        """Wrong password with an expired nonce is rejected, not marked stale."""
        nonce = self.nonce()
        self.clock.advance(digest.NONCE_LIFETIME_SECONDS + 1)
        credentials = signed(nonce, password="guess")
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.REJECTED
        )

    def test_forged_nonce_rechallenged(self) -> None:
        """A nonce this server did not issue (or another secret's) gets a fresh challenge."""
        other = DigestAuthenticator(
            REALM,
            b"another secret, 16 bytes+",
            self.clock,
            self.users,
            algorithms=digest.ALGORITHMS,
        )
        for nonce in ["bogus", nonce_from(other.challenges()[0]), "A" * 43, "!" * 43]:
            self.assertEqual(
                self.authenticator.verify(signed(nonce), "REGISTER", REQUEST_URI), Verdict.CHALLENGE
            )

    def test_nonce_shared_between_instances(self) -> None:
        """A second authenticator with the same secret accepts the first one's nonce."""
        twin = DigestAuthenticator(
            REALM, SECRET, self.clock, self.users, algorithms=digest.ALGORITHMS
        )
        self.assertEqual(
            twin.verify(signed(self.nonce()), "REGISTER", REQUEST_URI), Verdict.ACCEPTED
        )

    def test_replayed_nonce_count_is_stale(self) -> None:
        """Reusing a nonce-count is answered as stale; a higher one is accepted."""
        nonce = self.nonce()
        self.assertEqual(
            self.authenticator.verify(signed(nonce), "REGISTER", REQUEST_URI), Verdict.ACCEPTED
        )
        self.assertEqual(
            self.authenticator.verify(signed(nonce), "REGISTER", REQUEST_URI), Verdict.STALE
        )
        self.assertEqual(
            self.authenticator.verify(signed(nonce, nc="00000002"), "REGISTER", REQUEST_URI),
            Verdict.ACCEPTED,
        )

    def test_other_realm_or_algorithm_rechallenged(self) -> None:
        """Credentials for another realm or an unknown algorithm are re-challenged."""
        credentials = signed(self.nonce())
        from attrs import evolve

        for changed in (
            evolve(credentials, realm="other.org"),
            evolve(credentials, algorithm="SHA-512"),
        ):
            self.assertEqual(
                self.authenticator.verify(changed, "REGISTER", REQUEST_URI), Verdict.CHALLENGE
            )

    def test_uri_mismatch_malformed(self) -> None:
        """A digest-uri that is not the Request-URI is malformed (400)."""
        credentials = signed(self.nonce(), uri="sip:elsewhere.org")
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.MALFORMED
        )

    def test_bad_nonce_count_malformed(self) -> None:
        """A nonce-count that is not eight hex digits is malformed."""
        credentials = signed(self.nonce(), nc="zz")
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.MALFORMED
        )

    def test_non_ascii_response_rejected(self) -> None:
        """A response with non-ASCII characters is rejected, not an exception."""
        from attrs import evolve

        credentials = evolve(signed(self.nonce()), response="\u00e9" * 64)
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.REJECTED
        )

    def test_rfc2069_without_qop(self) -> None:
        """
        Credentials without qop (RFC 2069 style) are challenged again, even
        when correct: with no nonce-count they could be replayed.
        """
        from attrs import evolve

        nonce = self.nonce()
        ha1 = compute_ha1("MD5", "alice", REALM, "wonderland")
        response = compute_response("MD5", ha1, nonce, "REGISTER", REQUEST_URI)
        credentials = evolve(
            signed(nonce, algorithm="MD5"), qop=None, nc=None, cnonce=None, response=response
        )
        self.assertEqual(
            self.authenticator.verify(credentials, "REGISTER", REQUEST_URI), Verdict.CHALLENGE
        )

    def test_replay_after_the_nonce_left_the_cache(self) -> None:
        """
        A nonce pushed out of the bounded nonce-count cache cannot be
        replayed from nonce-count 1: it is stale, and the client gets a new one.
        """
        from p2psip.sip import digest

        self.patch(digest, "NONCE_COUNT_CACHE_SIZE", 2)
        first = signed(self.nonce())
        self.assertEqual(
            self.authenticator.verify(first, "REGISTER", REQUEST_URI), Verdict.ACCEPTED
        )
        self.clock.advance(1)
        for _ in range(2):
            other = signed(self.nonce())
            self.assertEqual(
                self.authenticator.verify(other, "REGISTER", REQUEST_URI), Verdict.ACCEPTED
            )
        self.assertEqual(self.authenticator.verify(first, "REGISTER", REQUEST_URI), Verdict.STALE)
        self.clock.advance(1)
        fresh = signed(self.nonce())
        self.assertEqual(
            self.authenticator.verify(fresh, "REGISTER", REQUEST_URI), Verdict.ACCEPTED
        )

    def test_algorithm_choice(self) -> None:
        """An MD5-only authenticator offers only MD5 and re-challenges SHA-256 credentials."""
        md5_only = DigestAuthenticator(REALM, SECRET, self.clock, self.users, algorithms=["MD5"])
        [challenge] = md5_only.challenges()
        self.assertIn("algorithm=MD5", challenge)
        nonce = nonce_from(challenge)
        self.assertEqual(md5_only.verify(signed(nonce), "REGISTER", REQUEST_URI), Verdict.CHALLENGE)
        self.assertEqual(
            md5_only.verify(signed(nonce, algorithm="MD5"), "REGISTER", REQUEST_URI),
            Verdict.ACCEPTED,
        )
        self.assertRaises(
            ValueError,
            DigestAuthenticator,
            REALM,
            SECRET,
            self.clock,
            self.users,
            algorithms=["SHA1"],
        )

    def test_short_secret_refused(self) -> None:
        """A secret shorter than 16 bytes is refused at construction."""
        self.assertRaises(ValueError, DigestAuthenticator, REALM, b"short", self.clock, self.users)
