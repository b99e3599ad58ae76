"""
The client half of the mediator's relay (``docs/mediator-protocol.md``, "Relay").

For a ``relayed`` session the client opens a second connection to the
mediator's control port, answers its challenge with ``relay-join`` (session
and token), and waits for ``relay-ready``; from then on the connection
carries the peer's bytes unchanged and belongs to the application's
protocol, which :meth:`RelayClientProtocol.attach` connects to it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from p2psip.nat import control_protocol


class RelayClientProtocol(Protocol):
    """
    A relay-join connection; after ``relay-ready`` it carries the peer's bytes.

    :param on_ready: called once, with None when both halves joined or with
        the reason (for the log) when the relay connection failed first.
    """

    def __init__(self, session_id: str, token: str, on_ready: Callable[[str | None], None]) -> None:
        self.session_id = session_id
        self.token = token
        self.on_ready: Callable[[str | None], None] | None = on_ready
        self.decoder: control_protocol.FrameDecoder | None = control_protocol.FrameDecoder()
        self.user: IProtocol | None = None
        self.pending = b""
        self.lost: Failure | None = None

    @property
    def ready(self) -> bool:
        """Whether the relay carries the peer's bytes (``relay-ready`` came)."""
        return self.decoder is None

    def _report(self, why: str | None) -> None:
        report, self.on_ready = self.on_ready, None
        if report is not None:
            report(why)

    def connect_failed(self, why: str) -> None:
        """The relay connection could not be made."""
        self._report(why)

    def connectionMade(self) -> None:
        # Relayed bytes are the application's stream: no Nagle.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.decoder is None:
            if self.user is None:
                self.pending += data
            else:
                self.user.dataReceived(data)
            return
        try:
            messages = self.decoder.feed(data, stop_after=lambda m: m["type"] == "relay-ready")
        except control_protocol.StuntDecodeError as e:
            self.transport.loseConnection()
            self._report(f"relay connection broke: {e}")
            return
        for message in messages:
            if message["type"] == "challenge":
                join = {
                    "type": "relay-join",
                    "version": control_protocol.PROTOCOL_VERSION,
                    "session": self.session_id,
                    "token": self.token,
                }
                self.transport.write(control_protocol.encode_frame(join))
            elif message["type"] == "relay-ready":
                self.pending = self.decoder.take_remainder()
                self.decoder = None
                self._report(None)
                return
            elif message["type"] == "error":
                self.transport.loseConnection()
                self._report(f"relay refused: {message['reason']}")
                return

    def attach(self, user: IProtocol) -> None:
        """Hand the relayed stream to the application's protocol."""
        assert self.transport is not None
        self.user = user
        user.makeConnection(self.transport)
        if self.pending:
            data, self.pending = self.pending, b""
            user.dataReceived(data)
        if self.lost is not None:
            user.connectionLost(self.lost)

    def close(self) -> None:
        """Drop the relay connection unless the application has it."""
        if self.user is None and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._report("relay connection closed before both sides joined")
        if self.user is not None:
            self.user.connectionLost(reason)
        else:
            self.lost = reason
