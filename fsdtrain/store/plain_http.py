"""GETs over kept-alive plain-HTTP connections to one endpoint, each answer's body received in one call.

A loader worker fetches its clips in a thread beside its decoder, and the two share the GIL. Through
botocore's HTTP session (urllib3 over http.client) a 600-KB body arrives in about 14 ``recv`` calls
of at most 64 KB: each gives the GIL up and takes it back from the decoder, and each pass through
urllib3's and http.client's reading code runs under it. Here the request goes out in one ``send``,
the headers are read into one buffer, and the rest of the body is received straight into its own
buffer with ``MSG_WAITALL``: one system call, the GIL released once for the whole body. The s3://
loader at 160x96 runs 1.028x as fast as over botocore's session, with 0.97x the worker's CPU
(benchmarks/data_throughput.py ``plain_vs_session``, side by side; docs/data-loading.md "Measured").

Only what an S3 GET needs: HTTP/1.1, no TLS and no proxy (:class:`fsdtrain.store.signed_get.SignedGets`
sends those through botocore's session), an answer with a ``Content-Length`` (any other is closed and
answered None, for the caller to ask again through the client). Failures are botocore's exception
classes, as botocore's own session raises them, so retries and messages stay the same. The read
timeout bounds each wait for bytes, as urllib3's does (``SO_RCVTIMEO``: ``MSG_WAITALL`` needs a
blocking socket, so the timeout is the kernel's, not Python's).
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass

__all__ = ["Answer", "PlainHttp"]

MAX_HEAD_BYTES = 64 * 1024  # status line and headers; more is not an S3 answer
MAX_ERROR_BODY_BYTES = 1 << 20  # an error answer's XML; a longer one is not read (its status still counts)
IDLE_CONNECTIONS = 16  # kept for the next GET, as botocore's pool keeps max_pool_connections
BODY_STEP_BYTES = 64 << 20  # a body is received into buffers of at most this size (a clip's fits in one)


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: its status, headers (names lower-cased) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Closed(Exception):
    """The connection ended before the answer's first byte (a kept-alive connection the server
    closed while idle: the request is sent again on a new one)."""


class PlainHttp:
    """GETs to ``http://host:port``, over up to :data:`IDLE_CONNECTIONS` kept-alive connections
    (thread-safe: each GET takes an idle connection or opens one, and returns it when its answer
    was read to the end). Not shared over a fork: like a client, one per process.

    Args:
        endpoint: the endpoint URL, as errors name it.
        host, port: where to connect.
        timeout_s: (connect, read) seconds; the read timeout bounds each wait for bytes.
    """

    def __init__(self, endpoint: str, host: str, port: int, *, timeout_s: tuple[float, float]) -> None:
        self.endpoint = endpoint
        self._address = (host, port)
        self._connect_s, self._read_s = timeout_s
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()

    def get(self, target: str, headers: dict[str, str]) -> Answer | None:
        """``GET target`` (path and query, already encoded) with ``headers`` (Host among them).

        Returns None, with nothing kept of the connection, for an answer this transport does not
        read (no ``Content-Length``, chunked, or informational): the caller asks again another way.

        Raises:
            botocore.exceptions.EndpointConnectionError: no connection could be made.
            botocore.exceptions.ConnectTimeoutError: the connection was not made in time.
            botocore.exceptions.ReadTimeoutError: the store sent nothing for the read timeout.
            botocore.exceptions.ConnectionClosedError: the connection ended or broke mid-answer.
            botocore.exceptions.IncompleteReadError: the body ended before its ``Content-Length``.
            botocore.exceptions.HTTPClientError: the answer is not HTTP/1.x.
        """
        request = "".join([f"GET {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"]).encode("latin-1")
        sock = self._take()
        if sock is not None:
            try:
                return self._exchange(sock, request)
            except _Closed:
                pass  # closed while idle: once more on a new connection, as urllib3 does
        try:
            return self._exchange(self._connect(), request)
        except _Closed:
            from botocore.exceptions import ConnectionClosedError

            raise ConnectionClosedError(endpoint_url=self.endpoint) from None

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    # --- one connection ------------------------------------------------------------------------

    def _take(self) -> socket.socket | None:
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append(sock)
                return
        sock.close()

    def _connect(self) -> socket.socket:
        from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError

        try:
            sock = socket.create_connection(self._address, timeout=self._connect_s)
        except TimeoutError:
            raise ConnectTimeoutError(endpoint_url=self.endpoint) from None
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=self.endpoint, error=exc) from None
        # blocking from here on (MSG_WAITALL waits only on a blocking socket), the kernel timing each wait
        sock.settimeout(None)
        micros = max(1, round(self._read_s * 1e6))  # a zero timeval would mean no timeout
        timeval = struct.pack("ll", micros // 1_000_000, micros % 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _exchange(self, sock: socket.socket, request: bytes) -> Answer | None:
        """Sends ``request`` and reads its answer; the connection is kept if it can carry another."""
        from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

        keep = False
        try:
            try:
                sock.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                raise _Closed() from None
            answer, keep = self._answer(sock)
            return answer
        except (BlockingIOError, TimeoutError):  # SO_RCVTIMEO / SO_SNDTIMEO ran out
            raise ReadTimeoutError(endpoint_url=self.endpoint) from None
        except OSError:  # reset, broken pipe, no route to host...: as urllib3's errors reach botocore
            raise ConnectionClosedError(endpoint_url=self.endpoint) from None
        finally:
            if keep:
                self._keep(sock)
            else:
                sock.close()

    def _answer(self, sock: socket.socket) -> tuple[Answer | None, bool]:
        """The answer on ``sock`` and whether the connection can carry another request."""
        from botocore.exceptions import HTTPClientError, IncompleteReadError

        head = bytearray(MAX_HEAD_BYTES)
        view, got, end = memoryview(head), 0, -1
        while end < 0:
            if got == len(head):
                raise HTTPClientError(error=f"the answer's headers are over {MAX_HEAD_BYTES} bytes")
            try:
                n = sock.recv_into(view[got:])
            except ConnectionResetError:
                if got == 0:
                    raise _Closed() from None
                raise
            if n == 0:
                if got == 0:
                    raise _Closed()
                raise HTTPClientError(error="the connection ended inside the answer's headers")
            got += n
            end = head.find(b"\r\n\r\n", max(0, got - n - 3), got)
        lines = bytes(head[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not _digits(code):
            raise HTTPClientError(error=f"not an HTTP/1.x answer: {lines[0][:60]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "")
        if status < 200 or "transfer-encoding" in headers or not _digits(length):
            return None, False  # not read here: the connection is closed, the caller asks another way
        size = int(length)
        if status >= 300 and size > MAX_ERROR_BODY_BYTES:
            return Answer(status, headers, b""), False
        have = min(size, got - end - 4)
        parts: list[bytes | bytearray] = [bytes(head[end + 4 : end + 4 + have])]
        while have < size:
            # the rest in one call (the GIL released once), into buffers of at most BODY_STEP_BYTES:
            # memory grows with the bytes that arrive, not with what the Content-Length claims
            part = bytearray(min(size - have, BODY_STEP_BYTES))
            view, filled = memoryview(part), 0
            while filled < len(part):
                n = sock.recv_into(view[filled:], len(part) - filled, socket.MSG_WAITALL)
                if n == 0:
                    raise IncompleteReadError(actual_bytes=have + filled, expected_bytes=size)
                filled += n
            parts.append(part)
            have += filled
        reusable = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close" and got - end - 4 <= size
        return Answer(status, headers, b"".join(parts)), reusable


def _digits(text: str) -> bool:
    """Whether ``text`` is a decimal number in ASCII digits (``str.isdigit`` also takes e.g. ``²``)."""
    return text.isascii() and text.isdigit()
