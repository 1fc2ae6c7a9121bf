"""A local mail server for ``./dev run``: keeps every e-mail followup sends, as it was sent.

Each message accepted is kept in a Maildir (``<maildir>/new/``) byte for byte as the client
sent it, one file each, written in ``tmp/`` and moved into ``new/`` (a reader never sees half
a message).  Nothing is parsed or written anew: the copy is what a customer's mail server
would receive, and keeping it costs four system calls (create, write, close, rename).
aiosmtpd's own ``Mailbox`` handler parsed each message, generated it again and stored it
through ``mailbox.Maildir.add`` (more calls: a stat, a link and an unlink): about 1 ms of CPU a
message on these machines, which made it the slowest part of the whole pipeline on two
cores, slower than followup's hand-overs.  It runs on uvloop, as the services do (what that saves:
``docs/capacity.md``).
Followup deletes a customer's copies when they are erased (``COMPLAINTS_MAIL_SPOOL``), found by
their ``Message-ID``.

    python deploy/local/mail_catcher.py --port 8025 --maildir .local/mail
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import mailbox
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import uvloop
from aiosmtpd.smtp import SMTP


class MaildirSpool:
    """An aiosmtpd handler that keeps each message's bytes in a Maildir."""

    def __init__(self, maildir: Path) -> None:
        mailbox.Maildir(maildir, create=True)  # tmp/, new/, cur/
        self.tmp, self.new = maildir / "tmp", maildir / "new"
        # a file name no other delivery uses, as Maildir's: when, which process, which message
        self._unique = f"{os.getpid()}_{{}}.{socket.gethostname().replace('/', '_')}"
        self._count = itertools.count()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self._keep(envelope.content)
        return "250 OK"

    def _keep(self, content: bytes) -> None:
        name = f"{time.time():.6f}.{self._unique.format(next(self._count))}"
        partial = self.tmp / name
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(partial, self.new / name)  # whole or not at all


async def serve(maildir: Path, port: int, host: str = "127.0.0.1") -> asyncio.Server:
    """The catcher listening on ``host:port``, spooling to ``maildir``."""
    handler = MaildirSpool(maildir)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: SMTP(handler, hostname="localhost"), host, port)


async def _run(maildir: Path, port: int) -> None:
    server = await serve(maildir, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(_run(args.maildir, args.port))


if __name__ == "__main__":
    main()
