"""A TCP relay in front of a server that can lose every connection silently, as a rebooted host or a NAT that
forgot its table does: no FIN reaches the client, and its next write is answered with a reset."""

from __future__ import annotations

import asyncio
import contextlib


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.severed = False


class SeveringRelay:
    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._pairs: set[_Pair] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> SeveringRelay:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def sever(self) -> None:
        """Drop every current connection on the server's side only; the clients learn of it when they write."""
        for pair in self._pairs:
            pair.severed = True
            pair.server.transport.abort()

    def cut(self) -> None:
        """Reset every current connection on both sides at once, as a proxy or load balancer restarting does."""
        for pair in list(self._pairs):
            pair.severed = True
            pair.client.transport.abort()
            pair.server.transport.abort()

    @property
    def connections(self) -> int:
        return len(self._pairs)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for pair in list(self._pairs):
            pair.client.transport.abort()
            pair.server.transport.abort()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()  # the server is down (restarting): the client sees a reset, as it would
            return
        pair = _Pair(writer, server_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(self._forward(reader, pair, to_server=True), self._forward(server_reader, pair))
        finally:
            self._pairs.discard(pair)

    async def _forward(self, source: asyncio.StreamReader, pair: _Pair, *, to_server: bool = False) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if pair.severed:
                    pair.client.transport.abort()  # a reset, as the forgotten connection's next packet gets
                    return
                (pair.server if to_server else pair.client).write(data)
        if not pair.severed:
            pair.client.close()
            pair.server.close()
