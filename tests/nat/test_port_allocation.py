"""Tests for the one NAT port-allocation classifier and endpoint prediction."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from p2psip.nat.port_allocation import (
    MAX_SEQUENTIAL_DELTA,
    PortAllocation,
    PortAllocationKind,
    ProbedNat,
    advance_port,
    classify_observations,
    classify_port_allocation,
    port_step,
    predict_endpoint,
)

PUBLIC = "198.51.100.1"
LOCAL_IP = "10.0.1.2"


def samples(*mapped: int, first_local: int = 40000) -> list[tuple[int, int]]:
    """(local port, mapped port) pairs from fresh local ports that never match the mapped ones."""
    return [(first_local + i, port) for i, port in enumerate(mapped)]


def kind_and_delta(allocation: PortAllocation) -> tuple[PortAllocationKind, int]:
    return (allocation.kind, allocation.delta)


class ClassifyPortAllocationTests(SynchronousTestCase):
    def test_delta_20_is_sequential(self) -> None:
        """Mapped ports 5000, 5020, 5040, 5060 are sequential with delta 20; the next is 5080."""
        allocation = classify_port_allocation(samples(5000, 5020, 5040, 5060))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, 20))
        self.assertEqual(allocation.predict(5060, 40003), 5080)
        self.assertEqual(allocation.predict(5060, 40003, steps=2), 5100)
        self.assertEqual(allocation.describe(), "NAT with sequential port allocation (delta +20)")

    def test_preserving(self) -> None:
        """Mapped ports equal to the local ports are preserving; the prediction is the local port."""
        allocation = classify_port_allocation([(4000, 4000), (4002, 4002), (5000, 5000)])
        self.assertEqual(allocation, PortAllocation(PortAllocationKind.PRESERVING))
        self.assertEqual(allocation.predict(4000, 6000), 6000)
        self.assertTrue(allocation.predictable)

    def test_preserving_local_ports_in_a_row(self) -> None:
        """Kept ports that happen to be consecutive are preserving, not sequential."""
        allocation = classify_port_allocation([(4000, 4000), (4001, 4001), (4002, 4002)])
        self.assertEqual(allocation.kind, PortAllocationKind.PRESERVING)

    def test_interference(self) -> None:
        """Steps that other flows lengthened do not hide the delta while two thirds agree."""
        # Six probes, one step disturbed; four probes (what a client makes), one of three.
        allocation = classify_port_allocation(samples(1000, 1002, 1004, 1009, 1011, 1013))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, 2))
        allocation = classify_port_allocation(samples(20005, 20006, 20008, 20009))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, 1))

    def test_too_much_interference(self) -> None:
        """Fewer than two thirds of the steps agreeing is random."""
        allocation = classify_port_allocation(samples(20005, 20006, 20008, 20011))
        self.assertEqual(allocation.kind, PortAllocationKind.RANDOM)

    def test_negative_delta(self) -> None:
        """A NAT counting down is sequential with a negative delta."""
        allocation = classify_port_allocation(samples(6000, 5998, 5996, 5994))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, -2))
        self.assertEqual(allocation.predict(5994, 40003), 5992)
        self.assertEqual(allocation.describe(), "NAT with sequential port allocation (delta -2)")

    def test_mixed_directions(self) -> None:
        """Steps both ways are random, even when two thirds of them agree."""
        for mapped in [(5000, 5001, 5000, 5001), (5000, 5020, 5010, 5030, 5050)]:
            self.assertEqual(
                classify_port_allocation(samples(*mapped)).kind, PortAllocationKind.RANDOM, mapped
            )

    def test_same_port_for_every_probe(self) -> None:
        """One public port for every new local port (a step of 0) is not sequential."""
        allocation = classify_port_allocation(samples(7000, 7000, 7000, 7000))
        self.assertEqual(allocation.kind, PortAllocationKind.RANDOM)
        self.assertFalse(allocation.predictable)

    def test_random(self) -> None:
        """Unrelated ports are random, which cannot be predicted."""
        allocation = classify_port_allocation(samples(16505, 30068, 2197, 43000))
        self.assertEqual(allocation, PortAllocation(PortAllocationKind.RANDOM))
        self.assertIsNone(allocation.predict(43000, 40003))
        self.assertEqual(allocation.describe(), "NAT with random port allocation")

    def test_widest_delta(self) -> None:
        """A constant step up to MAX_SEQUENTIAL_DELTA is sequential; a wider one is random."""
        widest = MAX_SEQUENTIAL_DELTA
        allocation = classify_port_allocation(samples(1000, 1000 + widest, 1000 + 2 * widest))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, widest))
        for step in (widest + 1, 2000):
            allocation = classify_port_allocation(samples(1000, 1000 + step, 1000 + 2 * step))
            self.assertEqual(allocation.kind, PortAllocationKind.RANDOM, step)

    def test_too_few_samples(self) -> None:
        """No sample, one sample, or two that are not preserving, are unknown."""
        for few in ([], [(4000, 4000)], [(4000, 20000)], samples(20000, 20001)):
            allocation = classify_port_allocation(few)
            self.assertEqual(allocation, PortAllocation(PortAllocationKind.UNKNOWN), few)
            self.assertFalse(allocation.predictable)
        self.assertEqual(
            classify_port_allocation([(4000, 4000), (4100, 4100)]).kind,
            PortAllocationKind.PRESERVING,
        )

    def test_wrap_past_65535(self) -> None:
        """Counting on from 65535 to 1 is a step of +1, and predictions wrap the same way."""
        allocation = classify_port_allocation(samples(65533, 65534, 65535, 1))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, 1))
        self.assertEqual(allocation.predict(1, 40003), 2)
        self.assertEqual(allocation.predict(65535, 40003), 1)
        down = classify_port_allocation(samples(2, 1, 65535, 65534))
        self.assertEqual(kind_and_delta(down), (PortAllocationKind.SEQUENTIAL, -1))
        self.assertEqual(down.predict(1, 40003), 65535)

    def test_wrap_to_the_bottom_of_the_range(self) -> None:
        """A NAT that wraps to the bottom of its port range shows one long forward step."""
        allocation = classify_port_allocation(samples(65534, 65535, 1024, 1025, 1026))
        self.assertEqual(kind_and_delta(allocation), (PortAllocationKind.SEQUENTIAL, 1))

    def test_port_step(self) -> None:
        """Steps are signed distances on the ring of ports 1..65535."""
        self.assertEqual(
            [
                port_step(5000, 5020),
                port_step(5020, 5000),
                port_step(65535, 1),
                port_step(1, 65535),
            ],
            [20, -20, 1, -1],
        )
        self.assertEqual(
            [advance_port(65535, 1), advance_port(1, -1), advance_port(10, 5, 3)], [1, 65535, 25]
        )

    @settings(deadline=None)
    @given(
        st.lists(st.tuples(st.integers(1, 65535), st.integers(1, 65535)), max_size=20),
        st.integers(1, 65535),
    )
    def test_any_samples(self, pairs: list[tuple[int, int]], local_port: int) -> None:
        """Any samples classify; a sequential delta is small and nonzero; predictions are real ports."""
        allocation = classify_port_allocation(pairs)
        if allocation.kind is PortAllocationKind.SEQUENTIAL:
            self.assertTrue(0 < abs(allocation.delta) <= MAX_SEQUENTIAL_DELTA)
        else:
            self.assertEqual(allocation.delta, 0)
        last = pairs[-1][1] if pairs else local_port
        predicted = allocation.predict(last, local_port)
        self.assertEqual(predicted is not None, allocation.predictable)
        if predicted is not None:
            self.assertTrue(1 <= predicted <= 65535)


class ClassifyObservationsTests(SynchronousTestCase):
    """Probe reports (local port, mapped host, mapped port), as the broker gets them."""

    def test_no_nat(self) -> None:
        """Mapped endpoints equal to the local ones mean no NAT."""
        nat = classify_observations(
            "198.51.100.5", [(4000, "198.51.100.5", 4000), (4001, "198.51.100.5", 4001)]
        )
        self.assertEqual(nat.kind, PortAllocationKind.NO_NAT)
        self.assertEqual(nat.describe(), "no NAT (public address)")

    def test_kept_address_new_ports(self) -> None:
        """The local address with other ports is classified by the ports, not as no NAT."""
        obs = [(4000 + i, "198.51.100.5", 30000 + i) for i in range(3)]
        self.assertEqual(
            classify_observations("198.51.100.5", obs).kind, PortAllocationKind.SEQUENTIAL
        )

    def test_preserving(self) -> None:
        """A NAT that keeps the local port is port-preserving; the peer aims at the hole port."""
        nat = classify_observations(LOCAL_IP, [(4000, PUBLIC, 4000), (4100, PUBLIC, 4100)])
        self.assertEqual((nat.kind, nat.public_ip), (PortAllocationKind.PRESERVING, PUBLIC))
        self.assertEqual(predict_endpoint(nat, 4100, []), (PUBLIC, 4100))

    def test_sequential(self) -> None:
        """Constant steps are sequential; the next flow from the hole port gets the next port."""
        obs = [(4000, PUBLIC, 20005), (4100, PUBLIC, 20006), (4200, PUBLIC, 20007)]
        nat = classify_observations(LOCAL_IP, obs)
        self.assertEqual((nat.kind, nat.allocation.delta), (PortAllocationKind.SEQUENTIAL, 1))
        self.assertEqual(predict_endpoint(nat, 4200, obs), (PUBLIC, 20008))

    def test_delta_20(self) -> None:
        """Mapped ports 5000, 5020, 5040, 5060 predict 5080 for the hole port's next flow."""
        obs = [(4000 + i, PUBLIC, port) for i, port in enumerate([5000, 5020, 5040, 5060])]
        nat = classify_observations(LOCAL_IP, obs)
        self.assertEqual((nat.kind, nat.allocation.delta), (PortAllocationKind.SEQUENTIAL, 20))
        self.assertEqual(predict_endpoint(nat, 4003, obs), (PUBLIC, 5080))

    def test_sequential_with_interference(self) -> None:
        """One step taken by other traffic does not hide a sequential NAT among four steps."""
        obs = [
            (4000 + i, PUBLIC, port) for i, port in enumerate([20005, 20006, 20008, 20009, 20010])
        ]
        nat = classify_observations(LOCAL_IP, obs)
        self.assertEqual((nat.kind, nat.allocation.delta), (PortAllocationKind.SEQUENTIAL, 1))
        self.assertEqual(predict_endpoint(nat, 4004, obs), (PUBLIC, 20011))

    def test_prediction_wraps(self) -> None:
        """A sequential NAT at 65535 is predicted to hand out port 1 next, never port 0."""
        obs = [(4000 + i, PUBLIC, port) for i, port in enumerate([65533, 65534, 65535])]
        self.assertEqual(
            predict_endpoint(classify_observations(LOCAL_IP, obs), 4002, obs), (PUBLIC, 1)
        )

    def test_random(self) -> None:
        """Unrelated mapped ports cannot be predicted; the guess is the last mapped port."""
        obs = [(4000, PUBLIC, 16505), (4100, PUBLIC, 30068), (4200, PUBLIC, 2197)]
        nat = classify_observations(LOCAL_IP, obs)
        self.assertEqual(nat.kind, PortAllocationKind.RANDOM)
        self.assertFalse(nat.predictable)
        self.assertEqual(predict_endpoint(nat, 4200, obs), (PUBLIC, 2197))

    def test_nothing_observed(self) -> None:
        """No observations are an unknown NAT without a public address."""
        nat = classify_observations(LOCAL_IP, [])
        self.assertEqual(nat, ProbedNat("", PortAllocation(PortAllocationKind.UNKNOWN)))
        self.assertEqual(nat.describe(), "NAT whose port allocation could not be determined")
