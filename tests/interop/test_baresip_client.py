"""
A real SIP phone, baresip, behind each of two thin clients.

An enrolled ring of ``twistd`` processes (a bootstrap and a peer) and two
``p2psip-client`` processes; bob's baresip registers at bob's client's
loopback adaptor and answers automatically, alice's registers at hers and
dials bob.  The call is established (baresip says so and alice's client
counts it answered), with audio (Opus from baresip's sine source) flowing
between the phones; the thin clients carry only the signalling.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater

from p2psip.testing import require_tool
from tests.integration.processes import RoleProcess, wait_for
from tests.integration.test_sip_overlay import _Tool
from tests.media.baresip import free_udp_and_tcp_port
from tests.integration.test_thin_client import DOMAIN, ThinClientRing

#: Opus at 48 kHz, which baresip's sine source needs; no sound device.
BARESIP_MODULES = ("opus.so", "ausine.so", "aufile.so", "account.so", "menu.so")


class BaresipThinClientTests(ThinClientRing):
    timeout = 150

    def setUp(self) -> None:
        self.baresip = require_tool("baresip")
        super().setUp()

    def phone(self, user: str, client: RoleProcess, seconds: int, *commands: str) -> _Tool:
        """baresip for ``user``, registered at ``client``'s adaptor, auto-answering."""
        directory = self.directory / f"baresip-{user}"
        directory.mkdir()
        port = free_udp_and_tcp_port()
        (directory / "config").write_text(
            f"sip_listen 127.0.0.1:{port}\n"
            # Relative to baresip's cwd: it cuts device names at 128 bytes.
            "audio_player aufile,received.wav\n"
            "audio_source ausine,440\n"
            "audio_alert aufile,/dev/null\n"
            "module_path /usr/lib/baresip/modules\n"
            + "".join(f"module {module}\n" for module in BARESIP_MODULES)
        )
        (directory / "accounts").write_text(
            f'<sip:{user}@{DOMAIN}>;outbound="sip:127.0.0.1:{client.sip_port}";'  # type: ignore[attr-defined]
            "regint=600;answermode=auto\n"
        )
        tool = _Tool()
        argv = [self.baresip, "-f", str(directory), "-t", str(seconds)]
        for command in commands:
            argv += ["-e", command]
        handle = reactor.spawnProcess(tool, self.baresip, argv, env=None, path=str(directory))

        def stop() -> Any:
            if tool.ended.called:
                return None
            handle.signalProcess("KILL")
            return tool.ended

        self.addCleanup(stop)
        return tool

    @inlineCallbacks
    def test_baresip_calls_baresip_through_thin_clients(self) -> Any:
        """alice's baresip calls bob's; both registered at their own thin client."""
        ring = yield self.start_ring(1)
        alice, bob = yield self.start_clients(ring[0], "alice", "bob")
        bob_phone = self.phone("bob", bob, 20)

        def registered(status: dict[str, Any]) -> bool:
            return [entry["aor"] for entry in status["sip"]["registered"]] == [f"sip:bob@{DOMAIN}"]

        yield wait_for(
            lambda: bob.call("status").addCallback(registered), 20, "bob's baresip to register"
        )
        alice_phone = self.phone("alice", alice, 4, f"/dial sip:bob@{DOMAIN}")
        yield wait_for(
            lambda: alice.call("status").addCallback(lambda s: s["calls"]["answered"] >= 1),
            20,
            "alice's call to be answered",
        )
        # A few seconds of the call; then alice's baresip quits (hanging up).
        code = yield alice_phone.ended
        output = alice_phone.output.decode(errors="replace")
        self.assertEqual(code, 0, output)
        self.assertIn(f"Call established: sip:bob@{DOMAIN}", output)
        self.assertIn("incoming rtp for 'audio' established", output)
        calls = (yield alice.call("status"))["calls"]
        [answered] = [call for call in calls["recent"] if call["status"] == 200]
        print(
            f"\nbaresip to baresip through two thin clients: 200 OK after {answered['final_response_ms']} ms"
        )
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertIn("Call established: sip:alice", bob_phone.output.decode(errors="replace"))
