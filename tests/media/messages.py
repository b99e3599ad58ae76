"""SIP messages with SDP for the media tests."""

from __future__ import annotations

from p2psip.sip.message import Request, Response, parse_message

CALLER_TAG = "caller-tag"
CALLEE_TAG = "callee-tag"


def sdp(host: str, port: int, *, video_port: int | None = None) -> bytes:
    lines = ["v=0", f"o=- 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    lines.append(f"m=audio {port} RTP/AVP 0")
    if video_port is not None:
        lines.append(f"m=video {video_port} RTP/AVP 96")
    return ("\r\n".join(lines) + "\r\n").encode()


def request(
    method: str,
    body: bytes = b"",
    *,
    call_id: str = "call-1",
    uri: str = "sip:bob@p2psip.test",
    via: str = "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa1",
    from_tag: str = CALLER_TAG,
    to_tag: str | None = None,
    cseq: int = 1,
) -> Request:
    to = "<sip:bob@p2psip.test>" + (f";tag={to_tag}" if to_tag else "")
    other = CALLEE_TAG if from_tag == CALLER_TAG else CALLER_TAG
    from_user = "alice" if from_tag == CALLER_TAG else "bob"
    if from_tag != CALLER_TAG:
        to = f"<sip:alice@p2psip.test>;tag={other}"
    text = (
        f"{method} {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n"
        f"From: <sip:{from_user}@p2psip.test>;tag={from_tag}\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(text.encode() + body)
    assert isinstance(message, Request)
    return message


def response(req: Request, status: int, body: bytes = b"") -> Response:
    to = str(req.headers.get("To"))
    if ";tag=" not in to:
        to += f";tag={CALLEE_TAG}"
    text = (
        f"SIP/2.0 {status} Whatever\r\nVia: {req.headers.get('Via')}\r\n"
        f"From: {req.headers.get('From')}\r\nTo: {to}\r\nCall-ID: {req.call_id}\r\n"
        f"CSeq: {req.cseq.number} {req.method}\r\n"
        + ("Content-Type: application/sdp\r\n" if body else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    message = parse_message(text.encode() + body)
    assert isinstance(message, Response)
    return message
