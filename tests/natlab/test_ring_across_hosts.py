"""
A ring that spans hosts, started from the shipped etc/*.ini (the NAT lab;
needs root, nftables and SIPp).

Each role runs in a network namespace of its own with its own address,
as a separate host would: the bootstrap and the mediator in the lab's
public host (198.51.100.10), super-node A in 10.0.1.2 and super-node B in
10.0.2.2, both "NATs" plain routers.  Their configuration files are
etc/bootstrap.ini, etc/peer.ini and etc/mediator.ini with only the
addresses changed (bootstrap endpoints) and the files they name moved
into the test's directory; the listeners stay on every interface with no
``advertise``, so each node must find its own address.  The test gives on
the command line only what a test must: the data directory and
``sip-digest-algorithms MD5`` for SIPp.

SIPp registers alice at A (inside A's namespace, its UAS there too), and
a SIPp caller in B's namespace calls her through B: B finds her
registration in the overlay and reaches A at the address A advertised.
With 127.0.0.1 as the advertised host (the old default for a wildcard
listener), B would send the call to itself.  Every role's /status and
/metrics are read inside its namespace and checked.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from p2psip.cli import main as p2psip_main
from p2psip.testing import repository_root, require_tool
from tests.integration.processes import OverlayCA
from tests.natlab.harness import NatLab, twistd_command

DOMAIN = "p2psip.test"  # etc/*.ini's overlay-name, unchanged
ADDRESS = {"pub": "198.51.100.10", "a": "10.0.1.2", "b": "10.0.2.2"}
#: The http listeners of etc/*.ini (loopback, inside each namespace).
HTTP = {"bootstrap": 8084, "peer": 8085, "mediator": 8087}
SCENARIOS = repository_root() / "tests" / "integration" / "sipp"
PASSWORD = "alice-password"
UAS_PORT = 5070


def example(role: str) -> str:
    return (repository_root() / "etc" / f"{role}.ini").read_text(encoding="utf-8")


class RingAcrossHostsTests(TestCase):
    timeout = 150

    def setUp(self) -> None:
        self.sipp = require_tool("sipp")
        self.directory = Path(self.mktemp()).resolve()
        self.directory.mkdir(parents=True)
        self.lab = NatLab.up(self, "none", "none", filter_mode="off")
        self.data_dirs: dict[str, Path] = {}
        self.processes: list[Any] = []

    def config(self, name: str, text: str) -> Path:
        path = self.directory / f"{name}.ini"
        path.write_text(text, encoding="utf-8")
        return path

    def start_role(self, where: str, role: str, config: Path) -> None:
        data_dir = self.directory / f"{role}-{where}" / "data"
        self.data_dirs[where if role != "mediator" else "mediator"] = data_dir
        process = self.lab.start(
            where,
            twistd_command(
                "-n",
                "--pidfile=",
                f"p2psip-{role}",
                "--config",
                str(config),
                "--data-dir",
                str(data_dir),
                *(("--sip-digest-algorithms", "MD5") if role == "peer" else ()),
            ),
            f"{role}-{where}",
        )
        self.processes.append(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- {process.log_path.name}:\n{process.log_path.read_text(errors='replace')[-3000:]}"
            for process in self.processes
        )

    def run_in(self, where: str, command: list[str]) -> Deferred[tuple[bytes, bytes, int]]:
        full = self.lab.exec_command(where, command)
        return getProcessOutputAndValue(full[0], full[1:], env=dict(os.environ))

    def api(self, where: str, role: str, *args: str) -> Deferred[dict[str, Any]]:
        """``p2psip ARGS --json`` inside ``where``; the answer, or {} when it fails."""
        return self.lab.role_api(where, HTTP[role], self.data_dirs[where], *args)

    @inlineCallbacks
    def http_get(self, where: str, port: int, path: str) -> Any:
        """The body of GET http://127.0.0.1:PORT/PATH inside ``where``."""
        out, err, code = yield self.run_in(
            where,
            [
                sys.executable,
                "-c",
                "import sys, urllib.request; "
                f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}{path}', "
                "timeout=10).read().decode())",
            ],
        )
        self.assertEqual(code, 0, err.decode(errors="replace"))
        return out.decode("utf-8")

    def wait_until(self, where: str, role: str, what: str, condition: Any) -> Any:
        return self.lab.wait_for_status(
            where,
            HTTP[role],
            self.data_dirs[where],
            what,
            condition,
            60,
            lambda: "\n" + self.logs(),
        )

    @inlineCallbacks
    def run_sipp(self, where: str, name: str, arguments: list[str]) -> Any:
        out, err, code = yield self.run_in(
            where,
            [
                self.sipp,
                *arguments,
                "-i",
                ADDRESS[where],
                "-nostdin",
                "-timeout",
                "30s",
                "-key",
                "domain",
                DOMAIN,
                "-m",
                "1",
            ],
        )
        if code != 0:
            output = (out + err).decode(errors="replace")[-3000:]
            self.fail(f"SIPp {name} exited {code}: {output}\n{self.logs()}")

    def files(self) -> dict[str, str]:
        """The files the examples name under /etc/p2psip, made in the test's directory."""
        users = self.directory / "users"
        with contextlib.redirect_stdout(io.StringIO()):
            status = p2psip_main(
                ["users", "add", "--file", str(users), "--domain", DOMAIN, "--password", PASSWORD]
                + [f"sip:alice@{DOMAIN}"]
            )
        self.assertEqual(status, 0)
        secrets = self.directory / "mediator-secrets"
        secrets.write_text("ring-node a-mediator-secret\n", encoding="utf-8")
        return {"/etc/p2psip/users": str(users), "/etc/p2psip/mediator-secrets": str(secrets)}

    @inlineCallbacks
    def test_sipp_registers_at_one_host_and_calls_through_another(self) -> Any:
        """SIPp registers alice at A and calls her through B, each role in its own namespace."""
        files = self.files()
        ca = OverlayCA(self.directory / "bootstrap-pub", DOMAIN)
        for where in ("a", "b"):
            # What `p2psip enrol` (and `p2psip enrol --user`) leave on each peer.
            ca.enrol_offline(self.directory / f"peer-{where}")
            ca.issue_user_certificates(self.directory / f"peer-{where}", [f"alice@{DOMAIN}"])

        bootstrap_ini = example("bootstrap")
        mediator_ini = example("mediator")
        for shipped, here in files.items():
            mediator_ini = mediator_ini.replace(shipped, here)
        self.start_role("pub", "bootstrap", self.config("bootstrap", bootstrap_ini))
        self.start_role("pub", "mediator", self.config("mediator", mediator_ini))
        yield self.wait_until("pub", "bootstrap", "the ring", lambda s: s.get("state") == "alone")
        for where, other in (("a", "b"), ("b", "a")):
            text = example("peer")
            # The shipped file's two bootstrap addresses: the lab's bootstrap,
            # and the other super-node as a second known peer.
            text = text.replace("tcp:198.51.100.1:6084", f"tcp:{ADDRESS['pub']}:6084")
            text = text.replace("tcp:198.51.100.2:6084", f"tcp:{ADDRESS[other]}:6084")
            for shipped, here in files.items():
                text = text.replace(shipped, here)
            self.assertEqual(
                re.findall(r"^(?:overlay|sip|advertise) *=.*", text, re.M)[:2],
                ["overlay = tcp:6084", "sip = udp:5060"],
            )
            self.start_role(where, "peer", self.config(f"peer-{where}", text))
        joined = {}
        for where in ("a", "b"):
            joined[where] = yield self.wait_until(
                where, "peer", "the peer to join", lambda s: s.get("state") == "joined"
            )
        # Each node found its own address: the one of its namespace, never 127.0.0.1.
        bootstrap_status = yield self.api("pub", "bootstrap", "status")
        self.assertEqual(bootstrap_status["address"], f"{ADDRESS['pub']}:6084")
        for where in ("a", "b"):
            self.assertEqual(joined[where]["address"], f"{ADDRESS[where]}:6084")
        ring = {}
        deadline = reactor.seconds() + 60
        while reactor.seconds() < deadline:
            ring = yield self.api("b", "peer", "ring")
            if ring.get("complete") and ring.get("count") == 3:
                break
            yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(
            sorted(node["address"] for node in ring["nodes"]),
            sorted(f"{address}:6084" for address in ADDRESS.values()),
        )

        uas = self.lab.start(
            "a",
            [self.sipp, "-sf", str(SCENARIOS / "uas.xml"), "-i", ADDRESS["a"], "-p", str(UAS_PORT)]
            + ["-nostdin", "-m", "1"],
            "uas",
        )
        self.assertIsNone(uas.poll())
        register_csv = self.directory / "register.csv"
        register_csv.write_text(
            f"SEQUENTIAL\nalice;[authentication username=alice password={PASSWORD}]\n",
            encoding="ascii",
        )
        yield self.run_sipp(
            "a",
            "register",
            [
                f"{ADDRESS['a']}:5060",
                "-sf",
                str(SCENARIOS / "register_digest.xml"),
                "-inf",
                str(register_csv),
                "-auth_uri",
                DOMAIN,
                "-key",
                "contact_port",
                str(UAS_PORT),
                "-p",
                "5071",
            ],
        )
        registration = yield self.api("b", "peer", "get", f"sip:alice@{DOMAIN}")
        self.assertTrue(registration.get("found"), registration)
        [binding] = registration["bindings"]
        self.assertEqual(binding["served_by"], joined["a"]["node_id"])
        self.assertEqual(binding["contact"], f"sip:alice@{ADDRESS['a']}:{UAS_PORT}")

        callee_csv = self.directory / "callee.csv"
        callee_csv.write_text("SEQUENTIAL\nalice\n", encoding="ascii")
        yield self.run_sipp(
            "b",
            "call",
            [
                f"{ADDRESS['b']}:5060",
                "-sf",
                str(SCENARIOS / "uac.xml"),
                "-key",
                "caller_domain",
                "elsewhere.test",
                "-inf",
                str(callee_csv),
                "-p",
                "5072",
            ],
        )
        status_a = yield self.api("a", "peer", "status")
        status_b = yield self.api("b", "peer", "status")
        self.assertEqual(status_a["sip"]["final_responses"]["INVITE"], {"200": 1})
        self.assertEqual(status_b["sip"]["final_responses"]["INVITE"], {"200": 1})

        # /status and /metrics of every role, read inside its own host.
        for where, role in (
            ("pub", "bootstrap"),
            ("pub", "mediator"),
            ("a", "peer"),
            ("b", "peer"),
        ):
            status = json.loads((yield self.http_get(where, HTTP[role], "/status")))
            self.assertIsInstance(status, dict)
            families = {
                family.name
                for family in text_string_to_metric_families(
                    (yield self.http_get(where, HTTP[role], "/metrics"))
                )
            }
            self.assertIn("process_start_time_seconds", families)
            expected = (
                "p2psip_mediator_clients_online" if role == "mediator" else "p2psip_overlay_links"
            )
            self.assertIn(expected, families, role)
            if role == "peer":
                self.assertIn("p2psip_sip_call_setup_seconds", families)
