"""
SIP over TLS against a real client: sipsak (built with GnuTLS) sends
OPTIONS and registers with Digest through a super-node's ``--sip-tls``
listener on loopback, checking the server certificate made in the test
against the CA file it is given.  (sipsak's call modes, -I and -M, crash
over TLS; calls over TLS are in ``tests/integration/test_sip_tls.py``.)

The super-node is the role's own SIP service (options parsed as the peer
role parses them, ``build_sip_stack``, ``SipService``) over an in-memory
DHT; every socket is on 127.0.0.1, port 0.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor, utils
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService, build_sip_stack, load_or_create_secret, load_users
from p2psip.sip.users import UsersFile
from p2psip.testing import require_tool
from tests.integration.test_peer_sip_service import MemoryNode
from tests.roles.test_peer import parse
from tests.sip.tls_certificate import write_sip_certificate

DOMAIN = "localhost"
NODE = 0xA11CE000000000000000000000000001


class SipsakTlsTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.sipsak = require_tool("sipsak")
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        self.certificate, key = write_sip_certificate(directory / "tls", DOMAIN)
        users = UsersFile.load(directory / "users", missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", "wonderland")
        users.save()
        options = parse(
            "--overlay-name",
            DOMAIN,
            "--sip",
            "udp:0:interface=127.0.0.1",
            "--sip-tls",
            "tcp:0:interface=127.0.0.1",
            "--sip-tls-certificate",
            str(self.certificate),
            "--sip-tls-key",
            str(key),
            "--users",
            str(directory / "users"),
            # sipsak reads only the first challenge and knows only MD5.
            "--sip-digest-algorithms",
            "MD5",
            "--data-dir",
            str(directory / "data"),
        )
        config = options.config
        assert config.sip is not None
        os.makedirs(config.data_dir)
        node = MemoryNode(NODE, reactor, {}, {})
        stack = build_sip_stack(
            config.sip,
            node,
            reactor,
            load_users(config.sip),
            load_or_create_secret(config.data_dir),
            "127.0.0.1",
        )
        self.service = SipService(stack, reactor, freeze_gc=False)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        hop = self.service.transport.local_hop("TLS")
        assert hop is not None
        self.tls_port = hop.port

    def sipsak_tls(self, *arguments: str) -> Deferred[tuple[bytes, bytes, int]]:
        """
        Run sipsak over TLS to the super-node, verifying its certificate.

        sipsak 0.9.8 reads one TLS record per reply and takes the session
        tickets a TLS 1.3 server sends after the handshake for an error
        ("nothing received"), so its GnuTLS is told to stop at TLS 1.2 (the
        server offers both).
        """
        priorities = Path(self.mktemp())
        priorities.write_text("[overrides]\ndisabled-version = tls1.3\n", encoding="ascii")
        argv = [
            *arguments,
            "--transport=tls",
            f"--tls-ca-cert={self.certificate}",
            "-p",
            "127.0.0.1",
            "-r",
            str(self.tls_port),
            "-vv",
        ]
        result: Deferred[tuple[bytes, bytes, int]] = utils.getProcessOutputAndValue(
            self.sipsak,
            argv,
            env=dict(os.environ, GNUTLS_SYSTEM_PRIORITY_FILE=str(priorities)),
        )
        return result

    @inlineCallbacks
    def check(self, *arguments: str) -> Generator[Deferred[Any], Any, str]:
        out, err, code = yield self.sipsak_tls(*arguments)
        text: str = (out + err).decode(errors="replace")
        self.assertEqual(code, 0, text[-3000:])
        return text

    @inlineCallbacks
    def test_options_over_tls(self) -> Generator[Deferred[Any], Any, None]:
        """OPTIONS over TLS is answered 200 on the same connection; sipsak accepted the certificate."""
        text = yield self.check("-s", f"sip:{DOMAIN}")
        self.assertIn("200 OK", text)
        self.assertGreater(self.service.transport.messages_received, 0)

    @inlineCallbacks
    def test_register_over_tls(self) -> Generator[Deferred[Any], Any, None]:
        """sipsak registers with Digest over TLS; the binding's flow is the TLS connection."""
        yield self.check(
            "-U",
            "-x",
            "300",
            "-u",
            "alice",
            "-a",
            "wonderland",
            "-s",
            f"sip:alice@{DOMAIN}",
        )
        [binding] = self.service.registrar.local_bindings(f"sip:alice@{DOMAIN}")
        self.assertEqual(binding.flow.transport, "TLS")  # type: ignore[attr-defined]
        self.assertEqual(
            self.service.proxy.metrics()["final_responses"]["REGISTER"], {"200": 1, "401": 1}
        )
