"""
A call between two thin clients behind NATs, driven by SIPp at each
client's loopback adaptor (the NAT lab; needs root, nftables and SIPp).

The mediator and a bootstrap run in the lab's public host; alice's thin
client runs behind NAT A and bob's behind NAT B, each under ``twistd -n``
with ``--mediator``, attached to the bootstrap over its own outgoing
link.  A SIPp callee in B registers as bob at bob's client; a SIPp caller
in A calls bob through alice's client.  Bob's adaptor announces
127.0.0.1 (the default listeners), which nobody else can reach, so alice's
client makes the SIP stream to bob's through the mediator: by TCP
simultaneous open behind two EIM NATs (a direct connection through both),
through the mediator's relay when one NAT allocates ports at random.  A
bob on a public address that his adaptor announces is reached there,
over the plain connect to the AppAttach address.  With Digest on both
adaptors (``--users``), alice's client challenges her caller and bob's
client trusts alice's Record-Route over the mediated stream, whose far end
is NAT A's address and not the one alice's client announces.  The
test prints which path the call's signalling took and checks it against
the NAT pair, as both clients' ``/status`` report it (``sip.paths``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from p2psip.sip.users import UsersFile
from p2psip.testing import require_tool, ring_node_mediator_secret
from tests.integration.processes import OverlayCA
from tests.integration.test_sip_overlay import SCENARIOS
from tests.natlab.harness import CONTROL, SECRET, NatLab, twistd_command

DOMAIN = "natlab.test"
OVERLAY_PORT = 6084
BOOTSTRAP = f"tcp:198.51.100.10:{OVERLAY_PORT}"
HTTP_PORT = 8088
ADAPTOR = 5062
CALLEE_PORT = 5070
BOB_PASSWORD = "bob-secret"
CALLER_PASSWORD = "caller-secret"
TIMERS = ("--update-interval", "2", "--ping-interval", "1", "--request-timeout", "3")


class ThinClientsOverNatTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.ca = OverlayCA(self.directory / "bootstrap", DOMAIN)
        self.data_dirs: dict[str, Path] = {}

    def start_bootstrap(self, lab: NatLab) -> None:
        directory = self.directory / "bootstrap"
        self.ca.enrol_offline(directory)
        data_dir = directory / "data"
        self.data_dirs["pub"] = data_dir
        lab.start(
            "pub",
            twistd_command(
                "-n",
                "--pidfile=",
                "p2psip-bootstrap",
                "--overlay-name",
                DOMAIN,
                *TIMERS,
                "--overlay",
                f"tcp:{OVERLAY_PORT}:interface=198.51.100.10",
                "--http",
                f"tcp:{HTTP_PORT}:interface=127.0.0.1",
                "--data-dir",
                str(data_dir),
                "--mediator",
                CONTROL,
                "--mediator-secret",
                ring_node_mediator_secret(SECRET, data_dir),
            ),
            "bootstrap",
        )

    def start_client(self, lab: NatLab, where: str, user: str, *extra: str) -> None:
        directory = self.directory / f"client-{user}"
        self.ca.enrol_offline(directory)
        self.ca.issue_user_certificates(directory, [f"{user}@{DOMAIN}"])
        data_dir = directory / "data"
        self.data_dirs[where] = data_dir
        lab.start(
            where,
            twistd_command(
                "-n",
                "--pidfile=",
                "p2psip-client",
                "--overlay-name",
                DOMAIN,
                *TIMERS,
                "--bootstrap",
                BOOTSTRAP,
                "--http",
                f"tcp:{HTTP_PORT}:interface=127.0.0.1",
                "--data-dir",
                str(data_dir),
                "--mediator",
                CONTROL,
                "--mediator-secret",
                ring_node_mediator_secret(SECRET, data_dir),
                "--direct-connect-timeout",
                "1",
                *extra,
            ),
            f"client-{user}",
        )

    def status(self, lab: NatLab, where: str, what: str, condition: Any) -> Any:
        return lab.wait_for_status(where, HTTP_PORT, self.data_dirs[where], what, condition)

    @staticmethod
    def credentials(user: str) -> str:
        return f"[authentication username={user} password={BOB_PASSWORD}]"

    def csv(self, name: str, *users: str) -> Path:
        path = self.directory / name
        path.write_text("SEQUENTIAL\n" + "".join(f"{u}\n" for u in users), encoding="ascii")
        return path

    def sipp_command(self, *arguments: str) -> list[str]:
        return [
            self.sipp,
            *arguments,
            "-i",
            "127.0.0.1",
            "-nostdin",
            "-key",
            "domain",
            DOMAIN,
            "-timeout",
            "30s",
            "-m",
            "1",
        ]

    @inlineCallbacks
    def sipp_succeeds(self, lab: NatLab, where: str, what: str, *arguments: str) -> Any:
        command = lab.exec_command(where, self.sipp_command(*arguments))
        done = yield deferToThread(
            subprocess.run, command, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            self.fail(f"SIPp {what} in {where} exited {done.returncode}:\n{done.stdout[-3000:]}")

    @inlineCallbacks
    def call_over_nats(
        self,
        nat_a: str,
        nat_b: str,
        expected: str,
        bob_listeners: tuple[str, ...] = (),
        digest: bool = False,
    ) -> Any:
        lab = NatLab.up(self, nat_a, nat_b)
        lab.start_mediator()
        self.start_bootstrap(lab)
        yield self.status(
            lab,
            "pub",
            "the bootstrap to found the ring",
            lambda s: s.get("state") == "alone" and s.get("mediator", {}).get("registered"),
        )
        users: tuple[str, ...] = ()
        if digest:
            path = self.directory / "users"
            accounts = UsersFile.load(path, missing_ok=True)
            accounts.set_password(f"sip:bob@{DOMAIN}", BOB_PASSWORD)
            accounts.set_password(f"sip:caller@{DOMAIN}", CALLER_PASSWORD)
            accounts.save()
            users = ("--users", str(path))
        self.start_client(lab, "a", "alice", *users)
        self.start_client(lab, "b", "bob", *bob_listeners, *users)
        ids = {}
        for where in ("a", "b"):
            status = yield self.status(
                lab,
                where,
                "the client to attach and log in to the mediator",
                lambda s: s.get("state") == "attached" and s.get("mediator", {}).get("registered"),
            )
            ids[where] = status["node_id"]
        # bob's SIPp answers on 5070 and registers there through bob's client.
        lab.start(
            "b",
            self.sipp_command("-sf", str(SCENARIOS / "uas.xml"), "-p", str(CALLEE_PORT)),
            "sipp-callee",
        )
        register: tuple[str, ...] = ("-sf", str(SCENARIOS / "register.xml"), "-inf")
        register += (str(self.csv("bob.csv", "bob")),)
        if digest:
            register = ("-sf", str(SCENARIOS / "register_digest.xml"), "-auth_uri", DOMAIN)
            register += ("-inf", str(self.csv("bob.csv", f"bob;{self.credentials('bob')}")))
        yield self.sipp_succeeds(
            lab,
            "b",
            "register bob at bob's client",
            f"127.0.0.1:{ADAPTOR}",
            *register,
            "-key",
            "contact_port",
            str(CALLEE_PORT),
            "-p",
            "5071",
        )
        yield self.status(
            lab,
            "b",
            "bob's registration",
            lambda s: [r["aor"] for r in s["sip"]["registered"]] == [f"sip:bob@{DOMAIN}"],
        )
        yield self.sipp_succeeds(
            lab,
            "a",
            "call bob through alice's client",
            f"127.0.0.1:{ADAPTOR}",
            "-sf",
            str(SCENARIOS / "uac.xml"),
            "-inf",
            str(self.csv("callee.csv", "bob")),
            "-key",
            "caller_domain",
            *(
                (DOMAIN, "-au", "caller", "-ap", CALLER_PASSWORD, "-auth_uri", f"bob@{DOMAIN}")
                if digest
                else ("elsewhere.test",)
            ),
            "-p",
            "5071",
        )
        alice = yield self.status(
            lab, "a", "the call to be counted", lambda s: s["calls"]["answered"] >= 1
        )
        bob = yield self.status(
            lab, "b", "bob's client to count the call", lambda s: s["calls"]["answered"] >= 1
        )
        outgoing = alice["sip"]["paths"]["outgoing"]
        incoming = bob["sip"]["paths"]["incoming"]
        print(
            f"\n{nat_a}/{nat_b}: the call's signalling went from alice's client to bob's "
            f"by {', '.join(outgoing) or 'no stream'} (bob's client saw {', '.join(incoming) or 'it at its listener'})"
        )
        self.assertEqual(set(outgoing), {expected}, alice["sip"]["paths"])
        # A plain connect arrives at bob's listener, not through the mediator.
        arrived = set() if expected == "app-attach" else {expected}
        self.assertEqual(set(incoming), arrived, bob["sip"]["paths"])
        [first] = [p for p in alice["sip"]["paths"]["recent"] if p["direction"] == "outgoing"][:1]
        self.assertEqual(first["node"], ids["b"])

    def test_eim_eim_simultaneous_open(self) -> Any:
        """Behind two EIM NATs the clients' SIP goes over a TCP connection punched through both."""
        return self.call_over_nats("eim", "eim", "simultaneous-open")

    def test_public_callee_reached_at_its_address(self) -> Any:
        """bob's client on a public address announces it: alice's client connects there, no mediator."""
        return self.call_over_nats(
            "eim",
            "none",
            "app-attach",
            (
                "--sip",
                f"tcp:{ADAPTOR}:interface=10.0.2.2",
                "--sip",
                f"udp:{ADAPTOR}:interface=127.0.0.1",
                "--sip",
                f"tcp:{ADAPTOR}:interface=127.0.0.1",
                "--sip-trusted-network",
            ),
        )

    def test_digest_at_both_clients(self) -> Any:
        """With Digest on both adaptors, bob's client trusts alice's over the punched stream."""
        return self.call_over_nats("eim", "eim", "simultaneous-open", digest=True)

    def test_eim_random_relayed(self) -> Any:
        """Behind an EIM and a random-allocation NAT the clients' SIP goes through the mediator's relay."""
        return self.call_over_nats("eim", "random", "relayed")


__all__ = ["ThinClientsOverNatTests"]
