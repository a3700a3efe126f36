"""The listening socket of `mvh serve`: bound before uvicorn starts, so port 0 can pick a free port."""

from __future__ import annotations

import socket

from mvh.errors import UsageError


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) (UsageError naming both when it cannot be).

    It is made with the protocol IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY)
    only on connections whose socket says it is TCP, and with Nagle on, a keep-alive client waited for
    the 40 ms delayed ACK on every response (measured: 44 ms for `/api/health` instead of ~1 ms).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"--host {host} --port {port}: cannot listen there ({exc}); choose another port"
        ) from exc
    return sock
