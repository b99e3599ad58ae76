"""``make demo`` runs an enrolled ring on loopback and places its call."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from p2psip.testing import repository_root


class DemoTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_demo_is_enrolled_and_calls(self) -> Any:
        """Every peer enrols over HTTPS, users get certificates, calls through super-nodes and thin clients are answered."""
        out, err, code = yield getProcessOutputAndValue(
            sys.executable,
            ["-m", "p2psip.demo"],
            env=dict(os.environ, PYTHONPATH=str(repository_root())),
            path=str(repository_root()),
        )
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        self.assertIn("each enrolled over HTTPS", text)
        self.assertIn("alice's user certificate from the CA is bound to super-node", text)
        self.assertIn("INVITE -> 200 OK", text)
        # The thin clients: attached, in nobody's tables, calling adaptor to adaptor,
        # and again after bob's attachment peer was killed.
        self.assertEqual(text.count("(the owner of its Node-ID); in 0 peers' tables"), 2)
        self.assertIn("bob's registration is stored at", text)
        self.assertIn("alice calls bob: INVITE -> 200 OK", text)
        self.assertIn("alice -> alice's client -> bob's client -> bob", text)
        self.assertIn("Killing bob's attachment peer", text)
        self.assertIn("alice calls bob again: 200 OK", text)
        self.assertIn("(1 killed)", text)
