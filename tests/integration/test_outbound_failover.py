"""
A phone registered through two super-nodes with SIP Outbound (RFC 5626)
gets each call once, over one flow, and over the other flow once the
first super-node is gone.

An enrolled ring of three ``twistd`` processes on loopback: the bootstrap
(where the caller enters) and super-nodes A and B.  baresip registers
alice with ``sipnat=outbound`` through A (``outbound1``, reg-id 1) and B
(``outbound2``, reg-id 2), one instance, and answers automatically; it
keeps both flows alive with STUN keepalives on the SIP UDP ports.  A SIPp
caller calls alice through the bootstrap: only A forwards the INVITE
(before SIP Outbound, A and B both did, and the phone answered the second
copy with 482).  A is then SIGKILLed and the next call reaches alice
through B.
"""

from __future__ import annotations

import signal
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from p2psip.testing import free_port, require_tool
from tests.media.audio import write_pcm_wav
from tests.media.baresip import free_udp_and_tcp_port as baresip_port
from tests.integration.alice_ring import AliceRingCase
from tests.integration.processes import RoleProcess, wait_for
from tests.integration.processes import ring_converged as converged
from tests.integration.test_sip_overlay import (
    FOREIGN_CALLER,
    SCENARIOS,
    _Tool,
)

DOMAIN = "outbound.test"
PASSWORD = "alice-outbound-password"


class OutboundFailoverTests(AliceRingCase):
    timeout = 180
    domain = DOMAIN
    password = PASSWORD

    def setUp(self) -> None:
        self.baresip = require_tool("baresip")
        super().setUp()

    def phone(self, first: RoleProcess, second: RoleProcess) -> _Tool:
        """alice's baresip, registered through ``first`` (reg-id 1) and ``second`` (reg-id 2)."""
        directory = self.directory / "baresip"
        directory.mkdir()
        port = baresip_port()  # the TLS transport takes the next port too
        rtp_low = free_port(socket.SOCK_DGRAM) & ~1
        # Relative to baresip's working directory: it cuts long paths short.
        audio = write_pcm_wav(directory / "tone.wav").name
        # The instance (+sip.instance) is the uuid module's, read from this file.
        (directory / "uuid").write_text("7a4d3c1e-0f5b-4b8e-9a6d-2c1f0e9b8a71")
        (directory / "config").write_text(
            f"sip_listen 127.0.0.1:{port}\n"
            "audio_player aufile,/dev/null\n"
            f"audio_source aufile,{audio}\n"
            f"audio_alert aufile,{audio}\n"
            f"rtp_ports {rtp_low}-{min(rtp_low + 10, 65535)}\n"
            "module_path /usr/lib/baresip/modules\n"
            + "".join(
                f"module {module}\n"
                for module in (
                    "uuid.so",
                    "g711.so",
                    "aufile.so",
                    "account.so",
                    "menu.so",
                )
            )
        )
        proxies = [f"sip:127.0.0.1:{node.sip_port};transport=udp" for node in (first, second)]  # type: ignore[attr-defined]
        (directory / "accounts").write_text(
            f"<sip:alice@{DOMAIN};transport=udp>;auth_pass={PASSWORD};"
            f'outbound1="{proxies[0]}";outbound2="{proxies[1]}";sipnat=outbound;'
            "regint=600;answermode=auto;audio_codecs=PCMU\n"
        )
        (directory / "contacts").write_text("")
        tool = _Tool()
        argv = [self.baresip, "-f", str(directory), "-t", "170"]
        handle = reactor.spawnProcess(tool, self.baresip, argv, env=None, path=str(directory))

        def stop() -> Any:
            if tool.ended.called:
                return None
            handle.signalProcess("KILL")
            return tool.ended

        self.addCleanup(stop)
        return tool

    def call(self, name: str, bootstrap: RoleProcess, logs: list[RoleProcess]) -> Any:
        callee_csv = self.directory / f"{name}.csv"
        callee_csv.write_text("SEQUENTIAL\nalice\n")
        return self.sipp_succeeds(
            name,
            [
                f"127.0.0.1:{bootstrap.sip_port}",  # type: ignore[attr-defined]
                *("-sf", str(SCENARIOS / "uac.xml"), *FOREIGN_CALLER, "-inf", str(callee_csv)),
                *("-p", str(free_port(socket.SOCK_DGRAM)), "-m", "1"),
            ],
            [bootstrap, *logs],
        )

    @staticmethod
    def invites(status: dict[str, Any]) -> dict[str, int]:
        answers: dict[str, int] = status["sip"]["final_responses"].get("INVITE", {})
        return answers

    @inlineCallbacks
    def test_one_invite_then_the_other_flow(self) -> Any:
        """The call goes through A only; with A SIGKILLed the next one goes through B."""
        bootstrap = self.start("p2psip-bootstrap", "bootstrap", [])
        yield wait_for(
            lambda: bootstrap.call("status").addCallback(lambda s: s.get("state") == "alone"),
            30,
            "the bootstrap",
        )
        a = self.start("p2psip-peer", "a", ["--bootstrap", bootstrap.endpoint])
        b = self.start("p2psip-peer", "b", ["--bootstrap", bootstrap.endpoint])
        yield self.joined(a)
        yield self.joined(b)
        yield wait_for(lambda: converged([bootstrap, a, b]), 60, "the ring of three")
        phone = self.phone(a, b)

        def registered(node: RoleProcess) -> Any:
            return node.call("status").addCallback(
                lambda s: s["sip"]["registrations"]["bindings"] == 1
            )

        try:
            yield wait_for(lambda: registered(a), 30, "alice's flow through A")
            yield wait_for(lambda: registered(b), 30, "alice's flow through B")
        except AssertionError as e:
            self.fail(
                f"{e}\n--- baresip:\n{phone.output.decode(errors='replace')[-3000:]}"
                f"\n--- A:\n{a.log_text()[-3000:]}"
            )

        try:
            yield self.call("first call", bootstrap, [a, b])
        except Exception as e:
            self.fail(f"{e}\n--- baresip:\n{phone.output.decode(errors='replace')[-3000:]}")
        status_a = yield a.call("status")
        status_b = yield b.call("status")
        self.assertEqual(self.invites(status_a), {"200": 1})
        self.assertEqual(self.invites(status_b), {}, "B forwarded the INVITE too")
        self.assertNotIn(b"482", phone.output)

        a.kill(signal.SIGKILL)
        self.assertEqual(a.wait_exit(), -signal.SIGKILL)
        yield self.call("call with A gone", bootstrap, [b])
        status_b = yield b.call("status")
        self.assertEqual(self.invites(status_b), {"200": 1})
