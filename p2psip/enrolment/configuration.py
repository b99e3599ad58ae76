"""
The overlay configuration document (RFC 6940 s11.1), written and checked.

The bootstrap serves it at ``/.well-known/reload-config`` (s11.2) as
``application/p2p-overlay+xml``: an ``<overlay>`` element in the namespace
``urn:ietf:params:xml:ns:p2p:config-base`` holding one ``<configuration>``
(the overlay name, the root certificate, the enrolment server, the
bootstrap nodes, CHORD-RELOAD with its timers in the ``config-chord``
namespace, the message size and TTL, and the Kinds with their data
models, limits and access policies) followed by its ``<signature>``.

Signing, as s11.1 describes it: the signature covers the bytes of the
``<configuration>`` element exactly as they stand in the document, from
its first ``<`` to its last ``>``; each ``<kind>`` element is signed the
same way and its ``<kind-signature>`` follows it in the ``<kind-block>``.
The signer (``configuration-signer`` and ``kind-signer``) is the overlay
root itself.  The RFC's grammar names only ``rsa-sha1``; the root here is
an ECDSA P-256 key, so ``algorithm="ecdsa-sha256"`` and the value is the
base64 of the DER ECDSA-SHA256 signature.

A peer verifies against the root it already trusts (pinned by fingerprint
or given as a file), never against a root the document brings: the
document's ``root-cert`` must be that root.  Where the signed bytes are is
taken from the parser's own positions of the elements it returns, so
what is verified is exactly what is used (a second ``<configuration>``
hidden elsewhere cannot carry the signature of the first).  Documents with
a DOCTYPE are refused, so entity expansion never happens.  Sans-IO.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from xml.parsers import expat
from xml.sax.saxutils import escape, quoteattr

import attrs
from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from p2psip.overlay.bodies import DataModel
from p2psip.overlay.kinds import Kind

BASE_NAMESPACE = "urn:ietf:params:xml:ns:p2p:config-base"
CHORD_NAMESPACE = "urn:ietf:params:xml:ns:p2p:config-chord"
SIGNATURE_ALGORITHM = "ecdsa-sha256"
TOPOLOGY_PLUGIN = "CHORD-RELOAD"
#: Node-IDs are 128 bits (RFC 6940 s11.1 ``node-id-length``, in bytes).
NODE_ID_LENGTH = 16
#: How long a served document stays valid; peers refuse expired ones.
DOCUMENT_LIFETIME_SECONDS = 7 * 24 * 3600
#: Larger documents are refused before parsing.
MAX_DOCUMENT_BYTES = 256 * 1024
#: Bounds on the tree a hostile document could build.
MAX_ELEMENTS = 4096
MAX_DEPTH = 16

#: RFC 6940 s7.2's data model names, as the document spells them.
DATA_MODEL_NAMES = {
    DataModel.SINGLE_VALUE: "SINGLE",
    DataModel.ARRAY: "ARRAY",
    DataModel.DICTIONARY: "DICTIONARY",
}


class ConfigurationRefused(ValueError):
    """A configuration document is not acceptable; ``str(error)`` says why."""


class Signer(Protocol):
    """What signs a document: the overlay CA (``OverlayAuthority``)."""

    root_der: bytes

    def sign(self, data: bytes) -> bytes: ...


@frozen
class KindDescription:
    """A Kind as the document describes it (s11.1 ``<kind>``)."""

    kind_id: int
    name: str
    data_model: str
    access_control: str
    max_count: int
    max_size: int
    max_node_multiple: int | None = None


@frozen
class BootstrapNode:
    """Where a joining peer may connect (s11.1 ``<bootstrap-node>``)."""

    address: str
    port: int


@frozen
class OverlayConfiguration:
    """What one ``<configuration>`` element says."""

    instance_name: str
    sequence: int
    #: Seconds since the epoch after which the document must not be used.
    expiration: float
    root_der: bytes
    enrolment_servers: tuple[str, ...]
    bootstrap_nodes: tuple[BootstrapNode, ...]
    kinds: tuple[KindDescription, ...]
    max_message_size: int
    initial_ttl: int
    chord_ping_interval_seconds: int
    chord_update_interval_seconds: int
    self_signed_permitted: bool = False


def describe_kinds(kinds: Iterable[Kind]) -> tuple[KindDescription, ...]:
    """The document's view of the Kinds a node stores (``overlay/kinds.py``)."""
    return tuple(
        KindDescription(
            kind_id=kind.kind_id,
            name=kind.name,
            data_model=DATA_MODEL_NAMES[kind.data_model],
            access_control=kind.access.value,
            max_count=kind.max_count,
            max_size=kind.max_size,
            max_node_multiple=kind.node_multiple_max or None,
        )
        for kind in sorted(kinds, key=lambda k: k.kind_id)
    )


# -- writing ----------------------------------------------------------------


def _utc_text(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _element(name: str, text: str, **attributes: str) -> str:
    attrs = "".join(
        f" {key.replace('_', '-')}={quoteattr(value)}" for key, value in attributes.items()
    )
    return f"<{name}{attrs}>{escape(text)}</{name}>"


def _signature_element(name: str, signer: Signer, signed: str) -> str:
    value = base64.b64encode(signer.sign(signed.encode("utf-8"))).decode("ascii")
    return _element(name, value, algorithm=SIGNATURE_ALGORITHM)


def _kind_element(kind: KindDescription) -> str:
    parts = [
        _element("data-model", kind.data_model),
        _element("access-control", kind.access_control),
        _element("max-count", str(kind.max_count)),
        _element("max-size", str(kind.max_size)),
    ]
    if kind.max_node_multiple is not None:
        parts.append(_element("max-node-multiple", str(kind.max_node_multiple)))
    return (
        f"<kind id={quoteattr(str(kind.kind_id))} name={quoteattr(kind.name)}>"
        + "".join(parts)
        + "</kind>"
    )


def write_configuration(configuration: OverlayConfiguration, signer: Signer) -> bytes:
    """
    The signed document for ``configuration``, UTF-8.

    ``signer`` must hold the key of ``configuration.root_der``; it signs
    every Kind and the whole configuration element.
    """
    if not hmac.compare_digest(configuration.root_der, signer.root_der):
        raise ValueError("the configuration names a root other than the signer's")
    root = base64.b64encode(configuration.root_der).decode("ascii")
    blocks = []
    for kind in configuration.kinds:
        kind_xml = _kind_element(kind)
        blocks.append(
            f"<kind-block>{kind_xml}{_signature_element('kind-signature', signer, kind_xml)}</kind-block>"
        )
    parts = [
        _element("topology-plugin", TOPOLOGY_PLUGIN),
        _element("node-id-length", str(NODE_ID_LENGTH)),
        _element("root-cert", root),
        *(_element("enrollment-server", url) for url in configuration.enrolment_servers),
        _element(
            "self-signed-permitted",
            "true" if configuration.self_signed_permitted else "false",
            digest="sha256",
        ),
        *(
            f"<bootstrap-node address={quoteattr(node.address)} port={quoteattr(str(node.port))}/>"
            for node in configuration.bootstrap_nodes
        ),
        _element("max-message-size", str(configuration.max_message_size)),
        _element("initial-ttl", str(configuration.initial_ttl)),
        _element("overlay-link-protocol", "TLS"),
        _element("clients-permitted", "false"),
        _element("no-ice", "true"),
        _element("configuration-signer", root),
        _element("kind-signer", root),
        _element("chord:chord-ping-interval", str(configuration.chord_ping_interval_seconds)),
        _element("chord:chord-update-interval", str(configuration.chord_update_interval_seconds)),
        _element("chord:chord-reactive", "true"),
        "<required-kinds>" + "".join(blocks) + "</required-kinds>",
    ]
    element = (
        f"<configuration instance-name={quoteattr(configuration.instance_name)} "
        f"sequence={quoteattr(str(configuration.sequence))} "
        f"expiration={quoteattr(_utc_text(configuration.expiration))}>"
        + "".join(parts)
        + "</configuration>"
    )
    document = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<overlay xmlns={quoteattr(BASE_NAMESPACE)} xmlns:chord={quoteattr(CHORD_NAMESPACE)}>"
        f"{element}{_signature_element('signature', signer, element)}</overlay>\n"
    )
    return document.encode("utf-8")


# -- reading ----------------------------------------------------------------


class _Element:
    """One parsed element: namespace, local name, attributes, text, children, byte span."""

    __slots__ = ("namespace", "name", "attributes", "text", "children", "start", "end")

    def __init__(self, namespace: str, name: str, attributes: dict[str, str], start: int) -> None:
        self.namespace = namespace
        self.name = name
        self.attributes = attributes
        self.text = ""
        self.children: list[_Element] = []
        self.start = start
        self.end = start

    def only(self, name: str, namespace: str = BASE_NAMESPACE) -> _Element:
        found = self.all(name, namespace)
        if len(found) != 1:
            raise ConfigurationRefused(
                f"<{self.name}> must hold exactly one <{name}>, not {len(found)}"
            )
        return found[0]

    def optional(self, name: str, namespace: str = BASE_NAMESPACE) -> _Element | None:
        found = self.all(name, namespace)
        if len(found) > 1:
            raise ConfigurationRefused(f"<{self.name}> holds more than one <{name}>")
        return found[0] if found else None

    def all(self, name: str, namespace: str = BASE_NAMESPACE) -> list[_Element]:
        return [c for c in self.children if c.name == name and c.namespace == namespace]


#: Prefix -> namespace: every declaration a configuration document may make.
_NAMESPACE_DECLARATIONS: dict[str | None, str] = {
    None: BASE_NAMESPACE,
    "chord": CHORD_NAMESPACE,
}


def _parse(document: bytes) -> _Element:
    """The element tree of ``document`` with byte spans; refuses DTDs and huge trees."""
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[_Element] = []
    roots: list[_Element] = []
    count = 0

    def refuse_dtd(*_: Any) -> None:
        raise ConfigurationRefused("the document has a DOCTYPE; configuration documents have none")

    def declared(prefix: str | None, uri: str) -> None:
        # The signatures cover <configuration> and each <kind>, but the
        # namespace declarations they are read with sit on <overlay>,
        # outside the signed bytes: re-pointing a prefix would change what
        # signed elements mean (a chord:* timer read as unknown, say).  So
        # the only declarations allowed are the two this format uses.
        if _NAMESPACE_DECLARATIONS.get(prefix) != uri:
            raise ConfigurationRefused(
                f"unexpected namespace declaration {prefix or '(default)'}={uri!r}; "
                "configuration documents declare only the RELOAD base and chord namespaces"
            )

    def started(qualified: str, attributes: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS or len(stack) >= MAX_DEPTH:
            raise ConfigurationRefused("the document is too large or too deeply nested")
        namespace, _, name = qualified.rpartition(" ")
        element = _Element(namespace, name, attributes, parser.CurrentByteIndex)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def ended(_qualified: str) -> None:
        element = stack.pop()
        position = parser.CurrentByteIndex
        if not element.children and not element.text and document[:position].endswith(b"/>"):
            # An empty-element tag <x/>: expat reports the byte after it (which
            # may start the parent's end tag: <a><x/></a>).  No other tag
            # with nothing inside it ends in "/>".
            element.end = position
            return
        # An end tag has no attributes, so its first '>' closes it.  expat
        # reports an element's end before it has seen that '>' (<a><x/></a
        # at the end of the input) and only then the error.
        close = document.find(b">", position)
        if not document.startswith(b"</", position) or close < 0:
            raise ConfigurationRefused("not well-formed XML: an end tag is not closed")
        element.end = close + 1

    def text(data: str) -> None:
        if stack:
            stack[-1].text += data

    parser.StartNamespaceDeclHandler = declared
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = started
    parser.EndElementHandler = ended
    parser.CharacterDataHandler = text
    try:
        parser.Parse(document, True)
    except expat.ExpatError as e:
        raise ConfigurationRefused(f"not well-formed XML: {e}") from None
    if len(roots) != 1:
        raise ConfigurationRefused("the document has no single root element")
    return roots[0]


def _base64(element: _Element) -> bytes:
    try:
        return base64.b64decode("".join(element.text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationRefused(f"<{element.name}> is not base64") from None


def _integer(element: _Element, lowest: int, highest: int) -> int:
    text = element.text.strip()
    if not (text.isascii() and text.isdigit()) or not lowest <= int(text) <= highest:
        raise ConfigurationRefused(f"<{element.name}> must be a whole number {lowest}..{highest}")
    return int(text)


def _boolean(element: _Element) -> bool:
    text = element.text.strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ConfigurationRefused(f"<{element.name}> must be true or false")
    return text in ("true", "1")


def _check_signature(
    document: bytes, signed: _Element, signature: _Element, key: ec.EllipticCurvePublicKey
) -> None:
    algorithm = signature.attributes.get("algorithm")
    if algorithm != SIGNATURE_ALGORITHM:
        raise ConfigurationRefused(
            f"<{signature.name}> uses algorithm {algorithm!r}; this overlay signs with "
            f"{SIGNATURE_ALGORITHM}"
        )
    try:
        key.verify(
            _base64(signature), document[signed.start : signed.end], ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise ConfigurationRefused(
            f"the signature of <{signed.name}> is not the overlay root's: the document was "
            "changed, or it comes from another overlay"
        ) from None


def _kind(element: _Element) -> KindDescription:
    id_text = element.attributes.get("id", "")
    if not (id_text.isascii() and id_text.isdigit()) or int(id_text) >= 2**32:
        raise ConfigurationRefused("a <kind> needs an id attribute, a 32-bit Kind-ID")
    multiple = element.optional("max-node-multiple")
    return KindDescription(
        kind_id=int(id_text),
        name=element.attributes.get("name", ""),
        data_model=element.only("data-model").text.strip(),
        access_control=element.only("access-control").text.strip(),
        max_count=_integer(element.only("max-count"), 0, 2**32 - 1),
        max_size=_integer(element.only("max-size"), 0, 2**32 - 1),
        max_node_multiple=None if multiple is None else _integer(multiple, 0, 2**32 - 1),
    )


def _expiration(text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationRefused(f"expiration {text[:40]!r} is not an xsd:dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def read_configuration(
    document: bytes, root_der: bytes, now: float, overlay_name: str | None = None
) -> OverlayConfiguration:
    """
    Check a configuration document against the trusted root and read it.

    :param root_der: the root this peer trusts (pinned); the document's
        ``root-cert`` must be the same certificate, and its signatures must
        be made with that root's key.
    :param overlay_name: when given, the ``instance-name`` it must have.
    :raises ConfigurationRefused: naming what is wrong.
    """
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ConfigurationRefused(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    key = x509.load_der_x509_certificate(root_der).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationRefused("the trusted root's key is not ECDSA")
    overlay = _parse(document)
    if (overlay.namespace, overlay.name) != (BASE_NAMESPACE, "overlay"):
        raise ConfigurationRefused(f"the root element must be <overlay> in {BASE_NAMESPACE}")
    names = [child.name for child in overlay.children if child.namespace == BASE_NAMESPACE]
    if names != ["configuration", "signature"]:
        raise ConfigurationRefused(
            "the document must hold one <configuration> followed by its <signature>"
        )
    configuration, signature = overlay.only("configuration"), overlay.only("signature")
    _check_signature(document, configuration, signature, key)

    roots = [_base64(element) for element in configuration.all("root-cert")]
    if not any(hmac.compare_digest(root, root_der) for root in roots):
        raise ConfigurationRefused("the document's root-cert is not the root this peer trusts")
    for signer_name in ("configuration-signer", "kind-signer"):
        for signer in configuration.all(signer_name):
            if not hmac.compare_digest(_base64(signer), root_der):
                raise ConfigurationRefused(f"<{signer_name}> is not the overlay root")
    instance_name = configuration.attributes.get("instance-name", "")
    if not instance_name:
        raise ConfigurationRefused("<configuration> has no instance-name")
    if overlay_name is not None and instance_name != overlay_name:
        raise ConfigurationRefused(
            f"the document is for overlay {instance_name!r}, not {overlay_name!r}; "
            "check --overlay-name"
        )
    expiration = _expiration(configuration.attributes.get("expiration", ""))
    if expiration <= now:
        raise ConfigurationRefused(
            f"the document expired at {_utc_text(expiration)}; check this host's clock"
        )
    sequence_text = configuration.attributes.get("sequence", "")
    if not (sequence_text.isascii() and sequence_text.isdigit()) or not (
        1 <= int(sequence_text) < 2**32 - 1
    ):
        raise ConfigurationRefused("<configuration> needs a sequence number 1..2**32-2")
    topology = configuration.optional("topology-plugin")
    if topology is not None and topology.text.strip() != TOPOLOGY_PLUGIN:
        raise ConfigurationRefused(
            f"topology plug-in {topology.text.strip()!r} is not {TOPOLOGY_PLUGIN}"
        )
    length = configuration.optional("node-id-length")
    if length is not None and _integer(length, 1, 255) != NODE_ID_LENGTH:
        raise ConfigurationRefused(f"node-id-length must be {NODE_ID_LENGTH}")

    kinds = []
    required = configuration.optional("required-kinds")
    for block in required.all("kind-block") if required is not None else []:
        kind = block.only("kind")
        _check_signature(document, kind, block.only("kind-signature"), key)
        kinds.append(_kind(kind))
    nodes = []
    for node in configuration.all("bootstrap-node"):
        port_text = node.attributes.get("port", "6084")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ConfigurationRefused("a <bootstrap-node> port must be 1..65535")
        nodes.append(BootstrapNode(node.attributes.get("address", ""), int(port_text)))
    self_signed = configuration.optional("self-signed-permitted")

    def number(name: str, default: int, namespace: str = BASE_NAMESPACE) -> int:
        element = configuration.optional(name, namespace)
        return default if element is None else _integer(element, 1, 2**32 - 1)

    return OverlayConfiguration(
        instance_name=instance_name,
        sequence=int(sequence_text),
        expiration=expiration,
        root_der=root_der,
        enrolment_servers=tuple(e.text.strip() for e in configuration.all("enrollment-server")),
        bootstrap_nodes=tuple(nodes),
        kinds=tuple(kinds),
        max_message_size=number("max-message-size", 5000),
        initial_ttl=number("initial-ttl", 100),
        chord_ping_interval_seconds=number("chord-ping-interval", 3600, CHORD_NAMESPACE),
        chord_update_interval_seconds=number("chord-update-interval", 600, CHORD_NAMESPACE),
        self_signed_permitted=False if self_signed is None else _boolean(self_signed),
    )


def document_sequence(now: float) -> int:
    """A sequence number that grows with time: the second the document was made."""
    return max(1, int(now))


def bootstrap_nodes(addresses: Sequence[tuple[str, int]]) -> tuple[BootstrapNode, ...]:
    """Distinct bootstrap nodes in the order given."""
    return tuple(BootstrapNode(host, port) for host, port in dict.fromkeys(addresses))


class ConfigurationPublisher:
    """
    The document a server hands out, signed again only when needed.

    ``describe`` returns what the document says now, its ``sequence`` and
    ``expiration`` left at 0; the publisher fills those in.  A new document
    is signed when the content changed (a bootstrap's address becomes known
    once it listens) or when half its lifetime has passed, with a sequence
    number above the last one (RFC 6940 s11.1: peers take the highest).
    """

    def __init__(
        self,
        signer: Signer,
        describe: Callable[[], OverlayConfiguration],
        now: Callable[[], float],
        lifetime_seconds: float = DOCUMENT_LIFETIME_SECONDS,
    ) -> None:
        self.signer = signer
        self.describe = describe
        self.now = now
        self.lifetime_seconds = lifetime_seconds
        self._content: OverlayConfiguration | None = None
        self._document = b""
        self._sequence = 0
        self._renew_at = 0.0

    def document(self) -> bytes:
        now = self.now()
        content = self.describe()
        if content != self._content or now >= self._renew_at:
            self._sequence = max(self._sequence + 1, document_sequence(now))
            signed = attrs.evolve(
                content, sequence=self._sequence, expiration=now + self.lifetime_seconds
            )
            self._document = write_configuration(signed, self.signer)
            self._content = content
            self._renew_at = now + self.lifetime_seconds / 2
        return self._document


def declared_roots(document: bytes) -> list[bytes]:
    """
    The ``root-cert`` values a document names, not yet verified.

    A peer that pinned only a fingerprint uses this to find the root to
    verify the document with (:func:`read_configuration`), and trusts it
    only if its fingerprint is the pinned one.
    """
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ConfigurationRefused(f"document larger than {MAX_DOCUMENT_BYTES} bytes")
    roots: list[bytes] = []
    for configuration in _parse(document).all("configuration"):
        roots.extend(_base64(element) for element in configuration.all("root-cert"))
    return roots
