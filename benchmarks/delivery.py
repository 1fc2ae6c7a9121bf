"""Followup's hand-overs to the message gateway and to the mail server, one process.

    .venv/bin/python benchmarks/delivery.py [--messages 2000]

This process hands messages over as followup's delivery worker does: as many at a time
(``HAND_OVERS_AT_ONCE``), through its notifiers.  The notifier's connections are closed after
each round of 400, as the worker closes them once nothing was due for a while (while messages
keep coming it keeps them longer: this is its costlier case).  The other side runs as its own
process (its CPU is not counted):

- ``gateway``: a real HTTP gateway (FastAPI under uvicorn, answering 200), through
  ``WebhookNotifier`` (phone, letter, chat, social, web messages);
- ``mail``: a real SMTP server that takes mail only after STARTTLS (aiosmtpd, with a
  certificate of its own authority, trusted here through ``SSL_CERT_FILE`` beside the
  system's authorities, as an operator adds a private one), through ``SmtpNotifier``.

Each baseline is the least a client can do for the same messages: one ``httpx`` client, or as
many SMTP connections, kept for the whole run.  Rounds of each pair alternate, each first in
turn; each figure is the messages over its rounds' total time, and this process's CPU per
message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiosmtplib
import httpx
import uvloop

from complaints_followup.notify import Outbound, SmtpNotifier, WebhookNotifier, email_message
from complaints_followup.worker import HAND_OVERS_AT_ONCE
from complaints_shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
AT_ONCE = HAND_OVERS_AT_ONCE  # the worker's hand-overs at the same time
ROUND = 400
SENDER = "Customer Care <care@complaints.local>"


def serve_gateway(port: int) -> None:
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


def _start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"{args[1:4]} did not start") from None
            time.sleep(0.1)


def _message(i: int, channel: str) -> Outbound:
    return Outbound(
        f"bench-{i}",
        channel,
        f"c{i}@example.pt" if channel == "email" else "+351910000000",
        "A sua reclamação CMP-2026-000123",
        "Recebemos a sua reclamação e vamos responder até amanhã. " * 4,
        "pt",
    )


async def _round(send: Callable[[Outbound], Awaitable[None]], start: int, channel: str) -> None:
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(i: int) -> None:
        async with gate:
            await send(_message(i, channel))

    await asyncio.gather(*(one(i) for i in range(start, start + ROUND)))


async def _compare(
    ways: dict[str, Callable[[int], Awaitable[None]]], messages: int
) -> dict[str, float]:
    """Each way's rate and CPU per message, in alternating rounds after one warm-up round."""
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
    n = rounds * ROUND
    figures: dict[str, float] = {"messages": n}
    for name, (wall, cpu) in spent.items():
        figures[f"{name}_per_s"] = n / wall
        figures[f"{name}_cpu_ms"] = cpu / n * 1000
    return figures


async def _gateway(url: str, messages: int) -> dict[str, float]:
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
            await _round(notifier.send, start, "phone")
        finally:
            await notifier.close_idle()  # as the worker once nothing is due for a while

    try:
        return await _compare(
            {"notifier": notifier_round, "raw": lambda s: _round(raw_send, s, "phone")},
            messages,
        )
    finally:
        await raw.aclose()


async def _mail(port: int, messages: int) -> dict[str, float]:
    settings = ServiceSettings(
        database_url="postgresql://unused/unused",
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_starttls=True,
        smtp_from=SENDER,
    )
    notifier = SmtpNotifier(settings)
    context = ssl.create_default_context()
    idle: list[aiosmtplib.SMTP] = []
    for _ in range(AT_ONCE):
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=True, tls_context=context
        )
        await client.connect()
        idle.append(client)

    async def raw_send(m: Outbound) -> None:
        client = idle.pop()
        try:
            mail = email_message(SENDER, m)
            assert isinstance(mail, bytes)  # ASCII addresses: the bytes SMTP carries
            await client.sendmail(
                "care@complaints.local", [m.to], mail, mail_options=["BODY=8BITMIME"]
            )
        finally:
            idle.append(client)

    async def notifier_round(start: int) -> None:
        try:
            await _round(notifier.send, start, "email")
        finally:
            await notifier.close_idle()

    try:
        return await _compare(
            {"notifier": notifier_round, "raw": lambda s: _round(raw_send, s, "email")},
            messages,
        )
    finally:
        for client in idle:
            await client.quit()


def _trusting(cert: Path, directory: Path) -> Path:
    """The system's trusted authorities and ``cert``, in one file for ``SSL_CERT_FILE``."""
    bundle = directory / "trusted.pem"
    system = ssl.get_default_verify_paths().cafile
    bundle.write_bytes((Path(system).read_bytes() if system else b"") + cert.read_bytes())
    return bundle


def bench(messages: int) -> dict[str, dict[str, float]]:
    sys.path.insert(0, str(ROOT))
    from tests.support import self_signed_certificate

    figures: dict[str, dict[str, float]] = {}
    port = _free_port()
    gateway = _start([sys.executable, __file__, "--serve-gateway", str(port)], port)
    try:
        figures["gateway"] = uvloop.run(_gateway(f"http://127.0.0.1:{port}/messages", messages))
    finally:
        gateway.terminate()
        gateway.wait(10)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        cert, key = self_signed_certificate(Path(tmp))
        port = _free_port()
        server = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
        tls = ["--tlscert", str(cert), "--tlskey", str(key), "-c", "aiosmtpd.handlers.Sink"]
        mail = _start(server + tls, port)
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(_trusting(cert, Path(tmp)))
        try:
            figures["mail"] = uvloop.run(_mail(port, messages))
        finally:
            if before is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = before
            mail.terminate()
            mail.wait(10)
    return figures


def report(figures: dict[str, dict[str, float]]) -> None:
    for name, f in figures.items():
        print(
            f"delivery {name}: notifier {f['notifier_per_s']:,.0f} messages/s,"
            f" {f['notifier_cpu_ms']:.2f} ms CPU each; kept connections"
            f" {f['raw_per_s']:,.0f}/s, {f['raw_cpu_ms']:.2f} ms"
            f" → {f['notifier_per_s'] / f['raw_per_s']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--serve-gateway", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.serve_gateway:
        serve_gateway(args.serve_gateway)
        return
    figures = bench(args.messages)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
