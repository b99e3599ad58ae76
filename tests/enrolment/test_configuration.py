"""
The overlay configuration document (RFC 6940 s11.1): written and signed by
the CA, read back only when every signature is the trusted root's.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from p2psip.enrolment import configuration as configuration_module
from p2psip.enrolment.authority import OverlayAuthority
from p2psip.enrolment.configuration import (
    BootstrapNode,
    ConfigurationPublisher,
    ConfigurationRefused,
    OverlayConfiguration,
    declared_roots,
    describe_kinds,
    read_configuration,
    write_configuration,
)
from p2psip.overlay.kinds import DEFAULT_KINDS, SIP_REGISTRATION
from p2psip.testing import TEST_CERTIFICATE_EPOCH

NOW = TEST_CERTIFICATE_EPOCH
OVERLAY = "example.org"


def configuration(authority: OverlayAuthority, **changes: object) -> OverlayConfiguration:
    described = OverlayConfiguration(
        instance_name=OVERLAY,
        sequence=7,
        expiration=NOW + 3600,
        root_der=authority.root_der,
        enrolment_servers=("https://192.0.2.1:8443/enrol",),
        bootstrap_nodes=(BootstrapNode("192.0.2.1", 6084), BootstrapNode("boot.example.org", 6085)),
        kinds=describe_kinds(DEFAULT_KINDS.values()),
        max_message_size=65536,
        initial_ttl=100,
        chord_ping_interval_seconds=15,
        chord_update_interval_seconds=60,
    )
    return attrs.evolve(described, **changes)


class ConfigurationDocumentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.authority = OverlayAuthority.create(OVERLAY, NOW)
        self.described = configuration(self.authority)
        self.document = write_configuration(self.described, self.authority)

    def read(self, document: bytes, **kwargs: object) -> OverlayConfiguration:
        arguments: dict[str, object] = {"now": NOW, "overlay_name": OVERLAY, **kwargs}
        return read_configuration(document, self.authority.root_der, **arguments)  # type: ignore[arg-type]

    def test_round_trip(self) -> None:
        """What the CA signs reads back as the same configuration."""
        self.assertEqual(self.read(self.document), self.described)

    def test_rfc_shape(self) -> None:
        """The document uses the s11.1 namespaces and element names."""
        text = self.document.decode()
        for part in (
            '<overlay xmlns="urn:ietf:params:xml:ns:p2p:config-base" '
            'xmlns:chord="urn:ietf:params:xml:ns:p2p:config-chord">',
            '<configuration instance-name="example.org" sequence="7" expiration=',
            "<topology-plugin>CHORD-RELOAD</topology-plugin>",
            '<self-signed-permitted digest="sha256">false</self-signed-permitted>',
            '<bootstrap-node address="192.0.2.1" port="6084"/>',
            "<chord:chord-update-interval>60</chord:chord-update-interval>",
            '<kind id="1" name="SIP-REGISTRATION"><data-model>DICTIONARY</data-model>'
            f"<access-control>{SIP_REGISTRATION.access.value}</access-control>",
            '</kind><kind-signature algorithm="ecdsa-sha256">',
            '</configuration><signature algorithm="ecdsa-sha256">',
        ):
            self.assertIn(part, text)

    def test_tampered_configuration(self) -> None:
        """Changing any byte of the configuration breaks its signature."""
        tampered = self.document.replace(b'port="6084"', b'port="6086"')
        error = self.assertRaises(ConfigurationRefused, self.read, tampered)
        self.assertIn("signature of <configuration>", str(error))

    def test_other_ca(self) -> None:
        """A document signed by another CA, naming its own root, is refused."""
        other = OverlayAuthority.create(OVERLAY, NOW)
        forged = write_configuration(configuration(other), other)
        self.assertRaises(ConfigurationRefused, self.read, forged)

    def test_root_swapped(self) -> None:
        """A document signed by the trusted root but naming another root-cert is refused."""
        other = OverlayAuthority.create(OVERLAY, NOW)
        root = self.authority.root_der
        text = write_configuration(self.described, self.authority)
        import base64

        swapped = text.replace(base64.b64encode(root), base64.b64encode(other.root_der))
        self.assertRaises(ConfigurationRefused, self.read, swapped)

    def test_second_configuration_hidden(self) -> None:
        """A forged configuration placed before the signed one is not accepted under its signature."""
        forged = configuration(
            self.authority, bootstrap_nodes=(BootstrapNode("203.0.113.66", 6084),)
        )
        start = self.document.index(b"<configuration")
        forged_element = write_configuration(forged, self.authority)
        forged_element = forged_element[
            forged_element.index(b"<configuration") : forged_element.index(b"</configuration>") + 16
        ]
        wrapped = self.document[:start] + forged_element + self.document[start:]
        self.assertRaises(ConfigurationRefused, self.read, wrapped)

    def test_tampered_kind(self) -> None:
        """A Kind's limits are covered by the configuration's signature and its own."""
        tampered = self.document.replace(b"<max-size>1024</max-size>", b"<max-size>9999</max-size>")
        self.assertRaises(ConfigurationRefused, self.read, tampered)

    def test_namespace_repointed_outside_the_signature(self) -> None:
        """
        The namespace declarations sit on <overlay>, outside the signed bytes;
        re-pointing one would change what signed elements mean (the chord
        timers silently read as defaults), so only the format's own two
        declarations are accepted.  Found by the enrolment fuzz harness.
        """
        chord = b'xmlns:chord="urn:ietf:params:xml:ns:p2p:config-chord"'
        for replacement in (
            b'xmlns:chord="urn:etfi:params:xml:ns:p2p:config-chord"',
            b'xmlns:chord="urn:ietf:params:xml:ns:p2p:config-base"',
            chord + b' xmlns:x="urn:example"',
        ):
            tampered = self.document.replace(chord, replacement)
            self.assertNotEqual(tampered, self.document)
            error = self.assertRaises(ConfigurationRefused, self.read, tampered)
            self.assertIn("namespace declaration", str(error))

    def test_expired_and_wrong_overlay(self) -> None:
        """An expired document, or one for another overlay, is refused with the reason."""
        error = self.assertRaises(ConfigurationRefused, self.read, self.document, now=NOW + 7200)
        self.assertIn("expired", str(error))
        error = self.assertRaises(
            ConfigurationRefused, self.read, self.document, overlay_name="other.org"
        )
        self.assertIn("--overlay-name", str(error))

    def test_doctype_refused(self) -> None:
        """A DOCTYPE (and so any entity expansion) is refused before anything is read."""
        bomb = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>' + self.document[39:]
        error = self.assertRaises(ConfigurationRefused, self.read, bomb)
        self.assertIn("DOCTYPE", str(error))

    def test_garbage(self) -> None:
        """Empty, truncated, foreign, non-UTF-8 and deeply nested documents are refused."""
        for document in (b"", b"<overlay", b"<x/>", b"\xff" * 10, b"<a>" * 100 + b"</a>" * 100):
            self.assertRaises(ConfigurationRefused, self.read, document)

    def test_empty_element_before_an_unclosed_end_tag(self) -> None:
        """
        An empty-element tag followed by an end tag cut off before its '>'
        raised ValueError (the reader took the cut end tag for the empty
        element's own).  Found by the enrolment fuzz harness.
        """
        document = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<overlay xmlns="urn:ietf:params:xml:ns:'
            b'p2p:config-base" xmlns:chord="urn:ietf:params:xml:ns:p2p:config-chord">'
            b'<configuration insta="127.0.0.1" port="8084"/><made address="127.0.0.1" '
            b'port="6084"/></ax-messa:pzbLpVX4qG0wCgYIKoar'
        )
        for read in (declared_roots, self.read):
            self.assertRaises(ConfigurationRefused, read, document)

    def test_empty_element_span(self) -> None:
        """An empty element's bytes end at its '/>', not at the parent's end tag after it."""
        root = configuration_module._parse(b"<a><b x='1'/></a>")
        [child] = root.children
        self.assertEqual((child.start, child.end, root.end), (3, 13, 17))

    def test_declared_roots(self) -> None:
        """The unverified root list is what a fingerprint-pinning peer picks its root from."""
        self.assertEqual(declared_roots(self.document), [self.authority.root_der])


class PublisherTests(SynchronousTestCase):
    def test_signed_again_when_needed(self) -> None:
        """The same content is served from cache; a change or half the lifetime signs anew."""
        authority = OverlayAuthority.create(OVERLAY, NOW)
        clock = [NOW]
        content = [configuration(authority, sequence=0, expiration=0)]
        publisher = ConfigurationPublisher(
            authority, lambda: content[0], lambda: clock[0], lifetime_seconds=100
        )
        first = publisher.document()
        self.assertIs(publisher.document(), first)
        content[0] = attrs.evolve(content[0], bootstrap_nodes=(BootstrapNode("192.0.2.9", 1),))
        second = publisher.document()
        clock[0] += 60
        third = publisher.document()
        sequences = [
            read_configuration(d, authority.root_der, NOW).sequence for d in (first, second, third)
        ]
        self.assertEqual(sequences, sorted(set(sequences)))
        self.assertEqual(read_configuration(third, authority.root_der, NOW).expiration, NOW + 160)
