"""Tests for NAT port-allocation classification and endpoint prediction."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat import port_allocation


class ClassifyTests(SynchronousTestCase):
    def test_no_nat(self) -> None:
        """Mapped endpoints equal to the local ones mean no NAT."""
        b = port_allocation.classify(
            "198.51.100.5", [(4000, "198.51.100.5", 4000), (4001, "198.51.100.5", 4001)]
        )
        self.assertEqual(b.allocation, port_allocation.NO_NAT)

    def test_preserving(self) -> None:
        """A NAT that keeps the local port is port-preserving."""
        b = port_allocation.classify(
            "10.0.1.2", [(4000, "198.51.100.1", 4000), (4100, "198.51.100.1", 4100)]
        )
        self.assertEqual(b.allocation, port_allocation.PRESERVING)
        self.assertEqual(port_allocation.predict_endpoint(b, 4100, []), ("198.51.100.1", 4100))

    def test_sequential(self) -> None:
        """Constant steps between mapped ports are sequential allocation; the next flow gets the next port."""
        obs = [
            (4000, "198.51.100.1", 20005),
            (4100, "198.51.100.1", 20006),
            (4200, "198.51.100.1", 20007),
        ]
        b = port_allocation.classify("10.0.1.2", obs)
        self.assertEqual((b.allocation, b.delta), (port_allocation.SEQUENTIAL, 1))
        self.assertEqual(port_allocation.predict_endpoint(b, 4200, obs), ("198.51.100.1", 20008))

    def test_sequential_with_interference(self) -> None:
        """One step taken by other traffic does not hide a sequential NAT among four steps."""
        obs = [
            (4000 + i, "198.51.100.1", port)
            for i, port in enumerate([20005, 20006, 20008, 20009, 20010])
        ]
        b = port_allocation.classify("10.0.1.2", obs)
        self.assertEqual((b.allocation, b.delta), (port_allocation.SEQUENTIAL, 1))
        self.assertEqual(port_allocation.predict_endpoint(b, 4004, obs), ("198.51.100.1", 20011))

    def test_random(self) -> None:
        """Unrelated mapped ports are random allocation, which cannot be predicted."""
        obs = [
            (4000, "198.51.100.1", 16505),
            (4100, "198.51.100.1", 30068),
            (4200, "198.51.100.1", 2197),
        ]
        b = port_allocation.classify("10.0.1.2", obs)
        self.assertEqual(b.allocation, port_allocation.RANDOM)
        self.assertFalse(b.predictable)
