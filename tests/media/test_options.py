"""The media relay's options: media-relay, media-ports, media-address."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.roles.test_peer import parse

SIP = ("--sip", "udp:5060:interface=192.0.2.10", "--sip-trusted-network")


class MediaOptionsTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        """Without media-relay there is no relay."""
        config = parse(*SIP).config.sip
        assert config is not None
        self.assertIsNone(config.media)

    def test_relay_settings(self) -> None:
        """The policy, range and address arrive in the frozen config; the address defaults to the SIP host."""
        config = parse(*SIP, "--media-relay", "NAT-only", "--media-ports", "41000-41099").config.sip
        assert config is not None and config.media is not None
        media = config.media
        self.assertEqual(
            (media.policy, media.low_port, media.high_port, media.address),
            ("nat-only", 41000, 41099, "192.0.2.10"),
        )

    def test_bad_values_name_the_option(self) -> None:
        """A wrong policy, range or address is refused with the option's name."""
        for arguments, option in (
            (("--media-relay", "sometimes"), "--media-relay"),
            (("--media-relay", "always", "--media-ports", "40000"), "--media-ports"),
            (("--media-relay", "always", "--media-ports", "500-600"), "--media-ports"),
            (("--media-relay", "always", "--media-ports", "40000-40001"), "--media-ports"),
            (("--media-relay", "always", "--media-address", "2001:db8::1"), "--media-address"),
        ):
            with self.assertRaises(usage.UsageError) as caught:
                parse(*SIP, *arguments)
            self.assertIn(option, str(caught.exception))

    def test_wildcard_sip_address_needs_media_address(self) -> None:
        """A relay behind a wildcard SIP listener must be told the address phones reach."""
        with self.assertRaises(usage.UsageError) as caught:
            parse("--sip", "udp:5060", "--sip-trusted-network", "--media-relay", "always")
        self.assertIn("--media-address", str(caught.exception))


class ExampleConfigTests(SynchronousTestCase):
    def test_peer_ini_media_keys_work(self) -> None:
        """The media keys etc/peer.ini shows (commented) are accepted once uncommented."""
        from p2psip.testing import repository_root
        from tests.test_config import ExampleConfigTests as Examples

        examples = Examples()
        users = self.mktemp()
        with open(users, "w", encoding="utf-8"):
            pass
        text = (repository_root() / "etc" / "peer.ini").read_text(encoding="utf-8")
        text = text.replace("users = /etc/p2psip/users", f"users = {users}")
        text = "\n".join(
            line[1:] if line.startswith("#media-") else line for line in text.splitlines()
        )
        options = examples.parse("peer", text)
        config = options.config.sip
        assert config is not None and config.media is not None
        self.assertEqual(
            (config.media.policy, config.media.low_port, config.media.address),
            ("nat-only", 40000, "198.51.100.7"),
        )
