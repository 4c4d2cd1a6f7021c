"""MLLP (HL7 v2 Minimal Lower Layer Protocol, HL7 v2.5.1 appendix C): each message framed as
<VT> message <FS><CR> over TCP, each answered by one framed acknowledgement on the same
connection. A connection per batch; every wait bounded by the destination's timeout."""

from __future__ import annotations

import socket
import ssl

START = b"\x0b"
END = b"\x1c\x0d"
MAX_ANSWER = 1 << 20  # an ACK is a few hundred bytes; anything this long is not one


class MllpError(OSError):
    """The peer closed, sent something that is not an MLLP frame, or did not answer in time."""


def frame(message: bytes) -> bytes:
    return START + message + END


class MllpConnection:
    def __init__(self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.tls = tls
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> MllpConnection:
        """OSError (refused, unreachable, timeout, TLS handshake) propagates."""
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            try:
                self._sock = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock
            except OSError:
                sock.close()
                raise
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MllpConnection:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def exchange(self, message: bytes) -> bytes:
        """Send one message and return the peer's one framed answer (without the framing)."""
        assert self._sock is not None, "not connected"
        try:
            self._sock.sendall(frame(message))
            return self._read_frame()
        except TimeoutError as exc:
            raise MllpError(f"no acknowledgement within {self.timeout_s:g} s") from exc

    def _read_frame(self) -> bytes:
        assert self._sock is not None
        while END not in self._buffer:
            if len(self._buffer) > MAX_ANSWER:
                raise MllpError(f"answer longer than {MAX_ANSWER} bytes without an MLLP end block")
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MllpError("the peer closed the connection without acknowledging")
            self._buffer += chunk
        answer, _, self._buffer = self._buffer.partition(END)
        start = answer.find(START)
        if start < 0:
            raise MllpError(f"answer is not an MLLP frame (no start block): {answer[:60]!r}")
        return answer[start + 1 :]
