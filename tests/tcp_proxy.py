"""A TCP proxy for tests that can go silent: a half-open connection on demand.

Until :meth:`TcpProxy.freeze` it forwards bytes both ways (the server's
after ``reply_delay_s``, like a slow network). Frozen, it stops
forwarding and keeps every socket open, without passing on a close either:
each side sees a peer that accepts bytes and never answers, as when a
network path dies without a reset. New connections are accepted and then
ignored the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int, reply_delay_s: float = 0.0) -> None:
        self._target = (target_host, target_port)
        self._reply_delay_s = reply_delay_s  # the server's bytes arrive this much later
        self._frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        """Stop forwarding, in both directions, on every connection from now on."""
        self._frozen.set()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._frozen.is_set():
            return  # accepted, never answered
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers.append(up_writer)
        for source, sink, delay in ((reader, up_writer, 0.0),
                                    (up_reader, writer, self._reply_delay_s)):
            task = asyncio.create_task(self._pipe(source, sink, delay))
            self._tasks.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    delay_s: float) -> None:
        while not self._frozen.is_set():
            read = asyncio.ensure_future(source.read(65536))
            frozen = asyncio.ensure_future(self._frozen.wait())
            await asyncio.wait({read, frozen}, return_when=asyncio.FIRST_COMPLETED)
            frozen.cancel()
            if self._frozen.is_set():
                read.cancel()
                return  # the bytes in flight are lost, like the path
            data = read.result()
            if not data:
                with contextlib.suppress(OSError):
                    sink.write_eof()
                return
            if delay_s:  # in order: every chunk waits the same time
                asyncio.get_running_loop().call_later(delay_s, sink.write, data)
            else:
                sink.write(data)
                await sink.drain()


@asynccontextmanager
async def tcp_proxy(
    target_host: str, target_port: int, reply_delay_s: float = 0.0
) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(target_host, target_port, reply_delay_s)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
