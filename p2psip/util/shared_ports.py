"""
Listening sockets that several processes share (``SO_REUSEPORT``).

With ``--workers N`` every worker process of one super-node host binds the
same SIP UDP and TCP ports; the kernel spreads datagrams by their address
four-tuple and connections as they are accepted, so one phone's flow stays
with one worker.  Twisted's ``listenUDP``/``listenTCP`` cannot set the
option before binding, so the socket is made here and handed to the
reactor (``IReactorSocket.adoptDatagramPort`` / ``adoptStreamPort``).
"""

from __future__ import annotations

import socket

__all__ = ["SHARED_PORT_KINDS", "reuse_port_socket"]

#: The endpoint kinds a shared listener may have.
SHARED_PORT_KINDS = ("udp", "tcp")


def reuse_port_socket(kind: str, interface: str, port: int) -> socket.socket:
    """
    A bound, non-blocking socket with ``SO_REUSEPORT`` (listening, for TCP).

    :raises OSError: the platform lacks the option, or the bind failed.
    """
    if kind not in SHARED_PORT_KINDS:
        raise ValueError(f"a shared port is udp or tcp, not {kind}")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("this platform has no SO_REUSEPORT: run one worker")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    kind_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family, kind_type)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface or ("::" if family == socket.AF_INET6 else "0.0.0.0"), port))
        if kind == "tcp":
            sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
