"""``make demo`` runs the whole system as role processes on loopback; its account is checked."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from p2psip.testing import repository_root


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DemoTests(TestCase):
    timeout = 180

    @inlineCallbacks
    def test_demo_account(self) -> Any:
        """The demo's ring, records, relayed call, kill and recovery, and that it stops everything."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "p2psip.demo"],
            env=dict(os.environ, PYTHONPATH=str(repository_root())),
            path=str(repository_root()),
        )
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        # Ring members: the bootstrap and four super-nodes, all logged in to the mediator.
        self.assertIn("The ring, clockwise", text)
        members = re.findall(
            r"^  [0-9a-f]{8}  (bootstrap|super-node \d) .*at the mediator$", text, re.M
        )
        self.assertEqual(sorted(members), ["bootstrap", *(f"super-node {i}" for i in range(1, 5))])
        self.assertRegex(text, r"mediator pid \d+: 5 ring members logged in")
        self.assertEqual(text.count("the owner of its Node-ID; in ring tables: no"), 2)
        # Where each record is stored, with replicas, and the lookup's hops.
        for user in ("alice", "bob"):
            self.assertRegex(
                text,
                rf"sip:{user}@demo.p2psip.test: stored at \S+ [^,]*, replicas at .+; "
                rf"served by {user}'s client",
            )
        self.assertEqual(len(re.findall(r"looked up from .* \(\d+ hops?\)", text)), 2)
        # The call, through a super-node's relay, and the RTP both ways.
        self.assertRegex(text, r"alice calls bob: INVITE -> 200 OK in [\d.]+ ms")
        self.assertRegex(
            text,
            r"signalling path: alice -> alice's client -> super-node [34] -> bob's client -> bob",
        )
        counted = re.findall(
            r"relay counted (\d+) packets alice -> bob and (\d+) bob -> alice", text
        )
        self.assertEqual(len(counted), 2, text)
        for forward, backward in counted:
            self.assertGreater(int(forward), 0)
            self.assertGreater(int(backward), 0)
        # The kill and the recovery.
        self.assertRegex(
            text, r"Killing bob's attachment peer, super-node 2 \(SIGKILL to pid \d+\)"
        )
        self.assertRegex(text, r"bob's client attached to super-node 3 .* after losing its peer")
        self.assertIn("alice calls bob again: 200 OK", text)
        self.assertRegex(text, r"the call path was back in \d+ ms")
        # /status of each client: its peer, its registration, its calls.
        self.assertRegex(text, r"alice's client +peer super-node 1 .*registered sip:alice@")
        self.assertRegex(text, r"bob's client +peer super-node 3 .*registered sip:bob@")
        self.assertRegex(text, r"[\d.]+ s in all\.")
        # Everything it started is gone.
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", text)]
        self.assertEqual(len(set(pids)), 8, text)
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
