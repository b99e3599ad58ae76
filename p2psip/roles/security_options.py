"""
The ring roles' security options, and the frozen settings they become.

A ring is secure by default: every node holds a certificate from the
overlay's CA (RFC 6940 s11.3) and believes only certificates from that CA
(``OverlayRootTrust``).  The bootstrap runs the CA and its enrolment
server; a peer gets its certificate with ``p2psip enrol``, or by itself on
first start when given ``--enrol-url``, ``--enrol-user``,
``--enrol-password-file`` and ``--ca-fingerprint``.  ``--insecure`` is the
development escape hatch: self-signed certificates (RFC 6940 s13.4), no
CA, and anyone may join and claim any user name.

:class:`SecurityOptions` is mixed into the ring roles' ``Options`` (its
``optParameters`` and ``optFlags`` are collected like the role's own);
:meth:`SecurityOptions.security_config` checks them and reads the
enrolment password file, so a bad value stops the role at once.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrs import field, frozen
from twisted.python import usage

from p2psip.enrolment.fingerprints import parse_fingerprint
from p2psip.enrolment.server import ListenAddressError, enrolment_listen_address

#: Where the bootstrap's enrolment server listens unless told otherwise.
DEFAULT_ENROL_LISTEN = "ssl:8443"


@frozen
class EnrolOnStart:
    """How a peer without a certificate gets one when it starts."""

    url: str
    account: str
    password: str = field(repr=False)
    #: The pinned root's fingerprint (``--ca-fingerprint``), if given.
    ca_fingerprint: bytes | None = None


@frozen
class AuthorityConfig:
    """The bootstrap's CA and enrolment server."""

    enrol_listen: str = DEFAULT_ENROL_LISTEN
    #: Operator-supplied CA files; None: ``ca-key.pem`` and ``ca-cert.pem`` in the data dir.
    ca_key: Path | None = None
    ca_cert: Path | None = None


@frozen
class SecurityConfig:
    """What a ring role trusts and how it gets its certificate."""

    #: ``--insecure``: self-signed certificates, no CA (development only).
    insecure: bool = False
    #: ``--overlay-root``: the root certificate, if not the data dir's ``overlay-root.pem``.
    overlay_root: Path | None = None
    enrol: EnrolOnStart | None = None
    #: Set on the bootstrap only (unless ``--insecure``).
    authority: AuthorityConfig | None = None


def _enrol_url(text: str) -> str:
    parts = urllib.parse.urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{text!r} is not an https:// URL")
    return text


_enrol_url.coerceDoc = "an https:// URL such as https://198.51.100.1:8443/enrol"  # type: ignore[attr-defined]


class SecurityOptions:
    """Options mixin of every ring role: certificates, the overlay root, enrolment, --insecure."""

    optParameters: list[list[Any]] = [
        [
            "overlay-root",
            None,
            None,
            "The overlay's root certificate (PEM), when it is not DATA_DIR/overlay-root.pem "
            "(which `p2psip enrol` writes).",
        ],
        [
            "enrol-url",
            None,
            None,
            "Enrolment server to get this node's certificate from on first start, as the "
            "bootstrap logs it: https://HOST:8443/enrol.",
            _enrol_url,
        ],
        ["enrol-user", None, None, "Enrolment account (one with the peer grant) for --enrol-url."],
        [
            "enrol-password-file",
            None,
            None,
            "File whose first line is the --enrol-user password (never on the command line).",
        ],
        [
            "ca-fingerprint",
            None,
            None,
            "The overlay CA's fingerprint, sha256:HEX (`p2psip ca fingerprint` on the "
            "bootstrap): --enrol-url must present that CA.",
        ],
    ]
    optFlags: list[list[Any]] = [
        [
            "insecure",
            None,
            "DEVELOPMENT ONLY: self-signed certificates and no CA, so anyone can join the ring "
            "and claim any user.",
        ],
    ]

    if TYPE_CHECKING:  # the Options this is mixed into is the dict of option values

        def __getitem__(self, key: str) -> Any: ...

        def get(self, key: str) -> Any: ...

    def authority_config(self) -> AuthorityConfig | None:
        """The CA this role runs; only the bootstrap has one."""
        return None

    def security_config(self) -> SecurityConfig:
        """Check the security options together; UsageError names the fix."""
        insecure = bool(self["insecure"])
        enrol_options = [
            name
            for name in ("enrol-url", "enrol-user", "enrol-password-file", "ca-fingerprint")
            if self[name]
        ]
        if insecure:
            chosen = enrol_options + [
                n for n in ("overlay-root", "ca-key", "ca-cert") if self.get(n)
            ]
            if chosen:
                raise usage.UsageError(
                    f"--insecure rings have no CA, so --{' --'.join(chosen)} cannot be used with "
                    "it: drop --insecure to run an enrolled ring, or drop those options"
                )
            return SecurityConfig(insecure=True)
        overlay_root = Path(self["overlay-root"]) if self["overlay-root"] else None
        enrol = None
        if enrol_options:
            enrol = self._enrol_on_start(overlay_root)
        return SecurityConfig(
            insecure=False,
            overlay_root=overlay_root,
            enrol=enrol,
            authority=self.authority_config(),
        )

    def _enrol_on_start(self, overlay_root: Path | None) -> EnrolOnStart:
        missing = [n for n in ("enrol-url", "enrol-user", "enrol-password-file") if not self[n]]
        if missing:
            raise usage.UsageError(
                "enrolling on first start needs --enrol-url, --enrol-user and "
                f"--enrol-password-file; --{' --'.join(missing)} missing"
            )
        fingerprint = None
        if self["ca-fingerprint"]:
            try:
                fingerprint = parse_fingerprint(self["ca-fingerprint"])
            except ValueError as e:
                raise usage.UsageError(f"--ca-fingerprint: {e}") from None
        elif overlay_root is None:
            raise usage.UsageError(
                "--enrol-url needs the CA pinned, so that the password goes to the overlay's own "
                "enrolment server: give --ca-fingerprint sha256:HEX (`p2psip ca fingerprint` on "
                "the bootstrap) or --overlay-root FILE"
            )
        return EnrolOnStart(
            url=self["enrol-url"],
            account=self["enrol-user"],
            password=self._password(self["enrol-password-file"]),
            ca_fingerprint=fingerprint,
        )

    def _password(self, path: str) -> str:
        try:
            with open(path, encoding="utf-8") as password_file:
                password = password_file.readline().rstrip("\r\n")
        except OSError as error:
            raise usage.UsageError(
                f"cannot read --enrol-password-file {path}: {error.strerror}; fix the path or "
                "the file's permissions"
            ) from None
        if not password:
            raise usage.UsageError(
                f"--enrol-password-file {path} is empty; put the password on its first line"
            )
        return password


class AuthorityOptions:
    """Options mixin of the bootstrap: where its enrolment server listens and which CA it runs."""

    optParameters: list[list[Any]] = [
        [
            "enrol-listen",
            None,
            DEFAULT_ENROL_LISTEN,
            "HTTPS listener of the enrolment server and the configuration document, "
            "ssl:PORT[:interface=ADDR]; its certificate is issued by the overlay CA.",
        ],
        [
            "ca-key",
            None,
            None,
            "The overlay CA's key (PEM), when it is not DATA_DIR/ca-key.pem (made on first start).",
        ],
        ["ca-cert", None, None, "The overlay CA's root certificate (PEM), with --ca-key."],
    ]

    if TYPE_CHECKING:

        def __getitem__(self, key: str) -> Any: ...

    def authority_config(self) -> AuthorityConfig | None:
        if bool(self["ca-key"]) != bool(self["ca-cert"]):
            raise usage.UsageError("--ca-key and --ca-cert go together: give both or neither")
        try:
            listen = enrolment_listen_address(self["enrol-listen"])
        except ListenAddressError as e:
            raise usage.UsageError(f"--enrol-listen: {e}") from None
        return AuthorityConfig(
            enrol_listen=listen,
            ca_key=Path(self["ca-key"]) if self["ca-key"] else None,
            ca_cert=Path(self["ca-cert"]) if self["ca-cert"] else None,
        )
