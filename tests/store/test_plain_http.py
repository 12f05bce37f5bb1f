"""Tests for fsdtrain.store.plain_http: GETs over kept-alive connections, against servers on loopback
that answer byte for byte what each test writes (slowly, in pieces, cut short, closed while idle)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
)
from counting_socket import counted_connections

from fsdtrain.store import plain_http
from fsdtrain.store.plain_http import MAX_HEAD_BYTES, PlainHttp

BODY = bytes(range(256)) * 4096  # 1 MiB, every byte value

Handler = Callable[[socket.socket, int], bool]  # (connection, request number) -> keep the connection open


class RawServer:
    """A TCP server on 127.0.0.1: for every request on every connection it calls ``handler``, which
    writes the answer's bytes itself; it counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.closed = 0  # connections the server has closed
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            self._requests(conn)
        finally:
            conn.close()
            self.closed += 1

    def _requests(self, conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            self.requests.append(head)
            try:
                if not self.handler(conn, len(self.requests)):
                    return
            except (BrokenPipeError, ConnectionResetError):
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], tuple[RawServer, PlainHttp]]]:
    """``serve(handler)``: a :class:`RawServer` and a :class:`PlainHttp` to it (read timeout 0.5 s)."""
    started: list[tuple[RawServer, PlainHttp]] = []

    def start(handler: Handler) -> tuple[RawServer, PlainHttp]:
        server = RawServer(handler)
        http = PlainHttp(f"http://127.0.0.1:{server.port}", "127.0.0.1", server.port, timeout_s=(1.0, 0.5))
        started.append((server, http))
        return server, http

    yield start
    for server, http in started:
        http.close()
        server.close()


def answer(conn: socket.socket, body: bytes, *, status: str = "206 Partial Content", extra: str = "", pieces: int = 1, pause_s: float = 0.0) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode())
    step = -(-len(body) // pieces) if body else 1
    for start in range(0, len(body), step):
        time.sleep(pause_s)
        conn.sendall(body[start : start + step])


def get(http: PlainHttp, target: str = "/bucket/key"):
    return http.get(target, {"Host": "127.0.0.1", "Range": "bytes=0-1048575"})


def test_a_body_sent_in_many_pieces_is_received_in_one_call(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = counted_connections(monkeypatch)
    server, http = serve(lambda conn, n: answer(conn, BODY, pieces=32, pause_s=0.002) or True)
    got = get(http)
    assert got is not None and got.status == 206 and got.body == BODY
    assert got.headers["content-length"] == str(len(BODY))
    # the headers (with or without the body's first bytes), then the rest of the body at once:
    # through http.client the same body takes one call per arriving piece of at most 64 KB
    assert counter.calls <= 3, counter.calls


def test_the_connection_is_kept_for_the_next_get(serve) -> None:
    server, http = serve(lambda conn, n: answer(conn, BODY[:1000] + bytes([n])) or True)
    assert [get(http).body[-1] for _ in range(3)] == [1, 2, 3]
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET /bucket/key HTTP/1.1\r\n") and b"\r\nRange: bytes=0-1048575" in server.requests[0]


def test_a_connection_the_server_closed_while_idle_is_replaced(serve) -> None:
    def once_per_connection(conn: socket.socket, n: int) -> bool:
        answer(conn, b"answer %d" % n)
        return False  # closes after each answer, without saying so

    server, http = serve(once_per_connection)
    assert get(http).body == b"answer 1"
    deadline = time.monotonic() + 10
    while server.closed < 1 and time.monotonic() < deadline:  # the server has closed the connection the client keeps
        time.sleep(0.005)
    assert get(http).body == b"answer 2"  # sent again on a new connection, not an error
    assert server.connections == 2 and len(server.requests) == 2


def test_connection_close_is_honoured(serve) -> None:
    server, http = serve(lambda conn, n: answer(conn, b"x", status="200 OK", extra="Connection: close\r\n") or True)
    get(http)
    get(http)
    assert server.connections == 2


def test_a_stalled_body_times_out(serve) -> None:
    def stall(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n0123456789")
        time.sleep(3)
        return False

    server, http = serve(stall)
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        get(http)
    assert time.monotonic() - started < 2.5


def test_a_body_cut_short_is_an_incomplete_read(serve) -> None:
    def cut(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n0123456789")
        return False

    server, http = serve(cut)
    with pytest.raises(IncompleteReadError, match="10 read, but total bytes expected is 100"):
        get(http)


def test_a_connection_reset_mid_body_is_a_closed_connection(serve) -> None:
    def reset(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100000\r\n\r\n0123456789")
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        return False

    server, http = serve(reset)
    with pytest.raises(ConnectionClosedError):
        get(http)


def test_no_server_is_an_endpoint_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = PlainHttp(f"http://127.0.0.1:{port}", "127.0.0.1", port, timeout_s=(1.0, 0.5))
    with pytest.raises(EndpointConnectionError, match=f"127.0.0.1:{port}"):
        get(http)


def test_a_new_connection_that_ends_before_any_answer_is_closed_error(serve) -> None:
    server, http = serve(lambda conn, n: False)  # reads the request, answers nothing, closes
    with pytest.raises(ConnectionClosedError):
        get(http)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",  # chunked
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",  # no length: until the close
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",  # informational first
    ],
)
def test_answers_read_some_other_way_are_left_to_the_caller(serve, head: bytes) -> None:
    server, http = serve(lambda conn, n: conn.sendall(head) or True)
    assert get(http) is None
    assert get(http) is None
    assert server.connections == 2  # the connection of an unread answer is not kept


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * MAX_HEAD_BYTES, f"over {MAX_HEAD_BYTES} bytes"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "ended inside the answer's headers"),
    ],
)
def test_what_is_not_an_http_answer_is_an_http_client_error(serve, head: bytes, match: str) -> None:
    server, http = serve(lambda conn, n: conn.sendall(head) or False)
    with pytest.raises(HTTPClientError, match=match):
        get(http)


def test_a_content_length_larger_than_what_comes_takes_no_memory_for_it(serve) -> None:
    def claim(conn: socket.socket, n: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n0123456789")  # 1 TB claimed
        return False

    server, http = serve(claim)
    with pytest.raises(IncompleteReadError, match="10 read, but total bytes expected is 1000000000000"):
        get(http)


def test_a_body_over_one_receive_buffer_arrives_whole(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plain_http, "BODY_STEP_BYTES", 100_000)
    server, http = serve(lambda conn, n: answer(conn, BODY, pieces=7) or True)
    assert get(http).body == BODY


def test_a_status_in_other_digits_is_not_an_http_answer(serve) -> None:
    server, http = serve(lambda conn, n: conn.sendall(b"HTTP/1.1 2\xb2\xb2 OK\r\nContent-Length: 1\r\n\r\nx") or False)
    with pytest.raises(HTTPClientError, match="not an HTTP/1.x answer"):  # '²' is a digit to str.isdigit, not to int()
        get(http)


def test_a_length_in_other_digits_is_left_to_the_caller(serve) -> None:
    server, http = serve(lambda conn, n: conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\nx") or False)
    assert get(http) is None


def test_a_long_error_body_is_not_read(serve) -> None:
    server, http = serve(lambda conn, n: answer(conn, b"<Error>" * 300_000, status="500 Internal Server Error") or True)
    got = get(http)
    assert got is not None and got.status == 500 and got.body == b""
    get(http)
    assert server.connections == 2  # its unread body is not mistaken for the next answer


def test_many_threads_share_the_connections(serve) -> None:
    server, http = serve(lambda conn, n: answer(conn, BODY[: 1000 + n % 7], pieces=3) or True)
    bodies: list[bytes] = []

    def reader() -> None:
        for _ in range(20):
            body = get(http).body
            bodies.append(body)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bodies) == 80 and all(b == BODY[: len(b)] and 1000 <= len(b) < 1007 for b in bodies)
    assert server.connections <= 4
