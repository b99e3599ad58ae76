"""
RFC 5780 behaviour discovery and the port-allocation probe through real
Linux NATs (the NAT lab; needs root and nftables).

The STUN server runs in the lab's public host on its two addresses; the
discovery client runs behind each NAT and prints what it found.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from p2psip.testing import require_root, require_tool, shared_path

# Run inside the lab's namespaces with this interpreter (which has p2psip).
LAB_SERVER_CODE = """
import sys
from twisted.internet import reactor
from p2psip.nat.stun_server import StunUdpService
service = StunUdpService(
    3478, interface=sys.argv[1], alternate_ip=sys.argv[2], alternate_port=3479, reactor=reactor
)
service.startService()
reactor.run()
"""

LAB_CLIENT_CODE = """
import json, sys
from twisted.internet.defer import Deferred
from twisted.internet.task import react
from p2psip.nat.behaviour import discover_nat_behaviour, probe_port_allocation
from p2psip.nat.stun_client import RetransmissionSchedule, StunUdpClient

async def main(reactor):
    local_ip, server_ip, alternate_ip = sys.argv[1:4]
    server = (server_ip, 3478)
    # The server may still be starting: the default schedule waits for it.
    warm_up = StunUdpClient(reactor)
    port = reactor.listenUDP(0, warm_up, interface=local_ip)
    await warm_up.binding(server)
    await port.stopListening()
    short = RetransmissionSchedule(0.1, 3, 4)
    found = await discover_nat_behaviour(reactor, reactor, server, local_ip, schedule=short)
    destinations = [server, (server_ip, 3479), (alternate_ip, 3478), (alternate_ip, 3479)]
    allocation, samples = await probe_port_allocation(
        reactor, reactor, destinations, count=6, interface=local_ip, schedule=short
    )
    print(json.dumps({
        "mapping": found.mapping.value,
        "filtering": found.filtering.value,
        "allocation": allocation.kind.value,
        "delta": allocation.delta,
        "samples": samples,
    }))

react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
"""

LAB_PUBLIC_IP = "198.51.100.10"
LAB_ALTERNATE_IP = "198.51.100.11"
LAB_HOSTS = {"a": "10.0.1.2", "b": "10.0.2.2"}
_lab_serial = itertools.count()


class NatLabBehaviourTests(SynchronousTestCase):
    """Discovery against real Linux NATs built by the shared NAT lab (needs root)."""

    def natlab(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [sys.executable, str(self.natlab_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(f"natlab {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def lab(self, nat_a: str, nat_b: str) -> str:
        """Build a lab (torn down in cleanup) with the STUN server running in its public host."""
        require_root("the NAT lab")
        require_tool("nft")
        require_tool("ip")
        self.natlab_path = shared_path("natlab", "natlab")
        prefix = f"sb{os.getpid() % 100000}x{next(_lab_serial)}"
        up = ["up", "--prefix", prefix, "--nat-a", nat_a, "--nat-b", nat_b]
        for side, nat in (("a", nat_a), ("b", nat_b)):
            up += [f"--filter-{side}", "off" if nat == "none" else "drop"]
        # Cleanup first: `down` must run even if `up` fails half-way; it
        # also ends every process left in the lab's namespaces.
        self.addCleanup(self.natlab, "down", "--prefix", prefix)
        self.natlab(*up)
        server = subprocess.Popen(
            [sys.executable, str(self.natlab_path), "exec", f"{prefix}-pub"]
            + [sys.executable, "-c", LAB_SERVER_CODE, LAB_PUBLIC_IP, LAB_ALTERNATE_IP],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop_server() -> None:
            if server.poll() is None:
                server.terminate()
                try:
                    server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()

        self.addCleanup(stop_server)
        return prefix

    def discover(self, prefix: str, side: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(self.natlab_path), "exec", f"{prefix}-{side}"]
            + [
                sys.executable,
                "-c",
                LAB_CLIENT_CODE,
                LAB_HOSTS[side],
                LAB_PUBLIC_IP,
                LAB_ALTERNATE_IP,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result

    def test_endpoint_independent_and_sequential(self) -> None:
        """An 'eim' NAT is endpoint-independent and port-preserving; a 'sequential' one port+1."""
        prefix = self.lab("eim", "sequential")
        eim = self.discover(prefix, "a")
        self.assertEqual(
            (eim["mapping"], eim["filtering"], eim["allocation"]),
            ("endpoint-independent", "address-and-port-dependent", "preserving"),
            eim,
        )
        sequential = self.discover(prefix, "b")
        self.assertEqual(
            (
                sequential["mapping"],
                sequential["filtering"],
                sequential["allocation"],
                sequential["delta"],
            ),
            ("address-and-port-dependent", "address-and-port-dependent", "sequential", 1),
            sequential,
        )

    def test_random_and_no_nat(self) -> None:
        """A 'random' NAT is address-and-port-dependent with random ports; no NAT is recognised."""
        prefix = self.lab("random", "none")
        symmetric = self.discover(prefix, "a")
        self.assertEqual(
            (symmetric["mapping"], symmetric["filtering"], symmetric["allocation"]),
            ("address-and-port-dependent", "address-and-port-dependent", "random"),
            symmetric,
        )
        public = self.discover(prefix, "b")
        self.assertEqual(
            (public["mapping"], public["filtering"], public["allocation"]),
            ("no-nat", "endpoint-independent", "preserving"),
            public,
        )
