"""Followup's hand-overs to the message gateway (phone, chat, social, web, letter), one process.

    .venv/bin/python benchmarks/gateway.py [--messages 2000]

A real HTTP gateway runs as its own process (FastAPI under uvicorn, answering 200); this
process hands messages to it through followup's ``WebhookNotifier``, as the delivery worker
does: 16 at a time, the notifier's kept connections closed at the end of each round of 400.
The baseline is the least an HTTP client can do for the same messages: one ``httpx`` client
kept for the whole run, posting the same bodies 16 at a time.  Rounds of the two alternate,
each first in turn; each figure is the messages over its rounds' total time, and this
process's CPU per message (the gateway's own CPU is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

from complaints_followup.notify import Outbound, WebhookNotifier

AT_ONCE = 16  # the worker's hand-overs at the same time (HAND_OVERS_AT_ONCE)
ROUND = 400


def serve(port: int) -> None:
    """The gateway: accepts every message (run in its own process)."""
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.post("/messages")
    async def receive() -> Response:
        return Response(status_code=200)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _message(i: int) -> Outbound:
    return Outbound(
        f"bench-{i}",
        "phone",
        "+351910000000",
        "A sua reclamação CMP-2026-000123",
        "Recebemos a sua reclamação e vamos responder até amanhã. " * 4,
        "pt",
    )


async def _round(send: Callable[[Outbound], Awaitable[None]], start: int) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        async with gate:
            await send(_message(i))

    await asyncio.gather(*(one(i) for i in range(start, start + ROUND)))


async def _measure(url: str, messages: int) -> dict[str, float]:
    notifier = WebhookNotifier(url)
    raw = httpx.AsyncClient(timeout=15)

    async def raw_send(m: Outbound) -> None:
        r = await raw.post(
            url,
            json={
                "id": m.delivery_id,
                "channel": m.channel,
                "to": m.to,
                "subject": m.subject,
                "body": m.body,
                "language": m.language,
            },
            headers={"Idempotency-Key": m.delivery_id},
        )
        r.raise_for_status()

    async def notifier_round(start: int) -> None:
        try:
            await _round(notifier.send, start)
        finally:
            await notifier.close_idle()  # the end of the worker's round

    ways: dict[str, Callable[[int], Awaitable[None]]] = {
        "notifier": notifier_round,
        "raw": lambda start: _round(raw_send, start),
    }
    for way in ways.values():  # warm-up: imports, the first connections
        await way(0)
    spent = {name: [0.0, 0.0] for name in ways}  # wall, CPU
    rounds = max(1, messages // ROUND)
    for r in range(rounds):
        for name in list(ways) if r % 2 == 0 else list(reversed(ways)):
            w0, c0 = time.perf_counter(), time.process_time()
            await ways[name](r * ROUND)
            spent[name][0] += time.perf_counter() - w0
            spent[name][1] += time.process_time() - c0
    await raw.aclose()
    n = rounds * ROUND
    return {
        "messages": n,
        "notifier_per_s": n / spent["notifier"][0],
        "notifier_cpu_ms": spent["notifier"][1] / n * 1000,
        "raw_per_s": n / spent["raw"][0],
        "raw_cpu_ms": spent["raw"][1] / n * 1000,
    }


def bench(messages: int) -> dict[str, float]:
    port = _free_port()
    gateway = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if gateway.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the gateway did not start") from None
                time.sleep(0.1)
        return uvloop.run(_measure(f"http://127.0.0.1:{port}/messages", messages))
    finally:
        gateway.terminate()
        gateway.wait(10)


def report(f: dict[str, Any]) -> None:
    print(
        f"gateway  notifier: {f['notifier_per_s']:,.0f} messages/s, {f['notifier_cpu_ms']:.2f} ms"
        f" CPU each; raw httpx client: {f['raw_per_s']:,.0f}/s, {f['raw_cpu_ms']:.2f} ms"
        f" → {f['notifier_per_s'] / f['raw_per_s']:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    figures = bench(args.messages)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
