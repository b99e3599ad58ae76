"""
Real clients register with a super-node's default Digest settings, no
tuning: baresip 1.0 (whose SIP library aborts on any SHA-256 challenge)
and SIPp (which answers only the first challenge, with MD5).

Two super-nodes of one in-memory DHT on loopback UDP; each client is a
real process on a port the OS handed out, ended at cleanup.  Skipped
without baresip or sipp unless P2PSIP_REQUIRE_INTEROP=1.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from p2psip.roles.sip_service import SipService
from p2psip.sip.users import UsersFile
from p2psip.testing import free_port, repository_root, require_tool
from tests.integration.test_peer_sip_service import start_super_nodes
from tests.interop.test_sip_tools import CollectingProcess, spawn_collecting
from tests.media.baresip import START_ATTEMPTS, free_udp_and_tcp_port

DOMAIN = "phones.test"
PASSWORD = "a-long-phone-password"
SIPP_SCENARIOS = repository_root() / "tests" / "integration" / "sipp"


class DefaultDigestTests(TestCase):
    """The default challenge list (MD5 alone) registers every client we know."""

    timeout = 30

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        users = UsersFile.load(self.directory / "users", missing_ok=True)
        users.set_password(f"sip:alice@{DOMAIN}", PASSWORD)
        users.save()
        self.node, _ = start_super_nodes(self, self.directory, DOMAIN, self.directory / "users")

    def spawn(
        self, executable: str, arguments: list[str], env: dict[str, str]
    ) -> CollectingProcess:
        return spawn_collecting(self, executable, arguments, str(self.directory), env)

    def registers(self, node: SipService) -> dict[str, int]:
        outcomes: dict[str, int] = node.status()["final_responses"].get("REGISTER", {})
        return outcomes

    @inlineCallbacks
    def test_baresip_registers(self) -> Any:
        """baresip 1.0 with an outbound proxy: 401 with MD5, then 200."""
        baresip = require_tool("baresip")
        assert self.node.advertised is not None
        config = self.directory / "baresip"
        config.mkdir()
        (config / "accounts").write_text(
            f"<sip:alice@{DOMAIN}>;auth_pass={PASSWORD};"
            f'outbound="sip:127.0.0.1:{self.node.advertised[1]}";regint=600\n',
            encoding="utf-8",
        )
        for _ in range(START_ATTEMPTS):
            (config / "config").write_text(
                f"sip_listen 127.0.0.1:{free_udp_and_tcp_port()}\n"
                "module_path /usr/lib/baresip/modules\n"
                "module account.so\nmodule g711.so\n",
                encoding="utf-8",
            )
            phone = self.spawn(
                baresip, ["-f", str(config), "-t", "2"], {"HOME": str(self.directory)}
            )
            yield phone.ended
            output = phone.output.decode(errors="replace")
            if "Address already in use" not in output:
                break  # else another process took a port between the probe and baresip's bind
        self.assertIn("200 OK", output, output[-2000:])
        self.assertNotIn("Function not implemented", output)
        self.assertGreaterEqual(self.registers(self.node).get("200", 0), 1)

    @inlineCallbacks
    def test_sipp_registers(self) -> Any:
        """SIPp answers the first challenge with MD5: 401, then 200."""
        sipp = require_tool("sipp")
        assert self.node.advertised is not None
        users = self.directory / "register.csv"
        users.write_text(
            f"SEQUENTIAL\nalice;[authentication username=alice password={PASSWORD}]\n",
            encoding="ascii",
        )
        tool = self.spawn(
            sipp,
            [
                f"127.0.0.1:{self.node.advertised[1]}",
                "-sf",
                str(SIPP_SCENARIOS / "register_digest.xml"),
                "-inf",
                str(users),
                "-auth_uri",
                DOMAIN,
                "-key",
                "domain",
                DOMAIN,
                "-key",
                "contact_port",
                "5999",
                "-m",
                "1",
                "-i",
                "127.0.0.1",
                "-p",
                str(free_port(socket.SOCK_DGRAM)),
                "-nostdin",
                "-timeout",
                "10s",
                "-timeout_error",
            ],
            {},
        )
        code = yield tool.ended
        self.assertEqual(code, 0, tool.output.decode(errors="replace")[-2000:])
        self.assertEqual(self.registers(self.node), {"401": 1, "200": 1})
