"""The API under a real uvicorn on a free loopback port, in a thread of the test process."""

from __future__ import annotations

import socket

from api.server import ServerThread as RunningApi

__all__ = ["RunningApi", "free_port"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
