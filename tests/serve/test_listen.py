"""`mvh serve`'s listening socket: connections that asyncio (uvicorn's loop) accepts on it send at once."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mvh.errors import UsageError
from mvh.serve.listen import listening_socket


def _nodelay_of_accepted_connection(sock: socket.socket) -> int:
    """TCP_NODELAY of the server side of one connection accepted by an asyncio server on `sock`."""

    async def main() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Record(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted = transport.get_extra_info("socket")
                seen.set_result(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Record, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value

    return asyncio.run(main())


def test_accepted_connections_have_nagle_off() -> None:
    """With Nagle on, every keep-alive response waited for the peer's 40 ms delayed ACK."""
    sock = listening_socket("127.0.0.1", 0)
    assert sock.getsockname()[1] > 0
    assert _nodelay_of_accepted_connection(sock) != 0


def test_a_protocol_0_socket_would_keep_nagle_on() -> None:
    """The check above can fail: asyncio leaves Nagle on for a socket made without IPPROTO_TCP."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    assert _nodelay_of_accepted_connection(sock) == 0


def test_a_port_in_use_is_a_usage_error_naming_host_and_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=rf"--host 127.0.0.1 --port {port}: cannot listen there"):
            listening_socket("127.0.0.1", port)
