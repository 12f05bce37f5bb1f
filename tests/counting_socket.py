"""Counts ``recv_into`` calls on new connections: each gives up the GIL and takes it back, which is
what a loader worker's fetch thread costs its decoder (fsdtrain/store/plain_http.py)."""

from __future__ import annotations

import socket

import pytest


class CountingSocket(socket.socket):
    """A socket that counts its ``recv_into`` calls (over all instances, in ``calls``)."""

    calls = 0

    def recv_into(self, *args, **kwargs):
        type(self).calls += 1
        return super().recv_into(*args, **kwargs)


def counted_connections(monkeypatch: pytest.MonkeyPatch) -> type[CountingSocket]:
    """Makes every connection ``socket.create_connection`` opens from now on a :class:`CountingSocket`
    (the count starts at 0); returns the class that holds the count."""
    create = socket.create_connection

    def counting(*args, **kwargs) -> CountingSocket:
        plain = create(*args, **kwargs)
        timeout = plain.gettimeout()
        wrapped = CountingSocket(plain.family, plain.type, plain.proto, fileno=plain.detach())
        wrapped.settimeout(timeout)
        return wrapped

    monkeypatch.setattr(socket, "create_connection", counting)
    CountingSocket.calls = 0
    return CountingSocket
