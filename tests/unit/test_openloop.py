"""The benches' open-loop HTTP client (``benchmarks/openloop.py``) against a server that closes
keep-alive connections left idle, as uvicorn does after 5 s."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

IDLE_TIMEOUT = 0.3  # the server's keep-alive timeout, seconds


def _openloop() -> ModuleType:
    path = Path(__file__).parents[2] / "benchmarks" / "openloop.py"
    spec = importlib.util.spec_from_file_location("bench_openloop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each request 201; close the connection once it has been idle ``IDLE_TIMEOUT``."""
    try:
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError):
                return
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("rate", [2.0, 10.0])
async def test_no_request_is_lost_to_a_connection_the_server_closed_while_idle(rate: float):
    """At 2 requests a second every connection has been idle past the server's timeout when its
    turn comes; at 10, taking 8 connections in turn left each idle 0.8 s, and most requests
    failed on a closed connection. Every request is answered either way."""
    openloop = _openloop()
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    body = b'{"n": 1}'
    request = (
        b"POST /complaints HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    try:
        out = await openloop.run("127.0.0.1", port, lambda i: request, rate, 2.0, connections=8)
    finally:
        server.close()
        await server.wait_closed()
    assert out.offered == int(rate * 2.0)
    assert (out.ok, out.failed, out.unanswered, out.unsent) == (out.offered, 0, 0, 0)
    assert out.statuses == {201: out.offered}
