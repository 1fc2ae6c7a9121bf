"""``./dev run``'s mail server (``deploy/local/mail_catcher.py``): each message kept in its
Maildir exactly as it was sent, found again by its ``Message-ID`` when its customer is erased.
A real SMTP exchange, with followup's own notifier."""

from __future__ import annotations

import mailbox
import uuid
from email import message_from_bytes
from email.policy import default
from pathlib import Path

import aiosmtplib
import pytest
from mail_catcher import serve  # deploy/local, on the tests' path

from complaints_followup.notify import Outbound, SmtpNotifier, message_id
from complaints_followup.projection import remove_from_spool
from complaints_shared.settings import ServiceSettings
from tests.support import free_port

pytestmark = pytest.mark.integration


def spooled(maildir: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((maildir / "new").iterdir())]


async def test_the_local_mail_catcher_keeps_each_message_as_sent_until_it_is_erased(
    tmp_path: Path,
):
    maildir, port = tmp_path / "mail", free_port()
    server = await serve(maildir, port)
    try:
        # as sent, to the byte: line ends, folded headers, a line that starts with a dot (the
        # client doubles it on the wire, the server takes the double away), nothing added
        first = uuid.uuid4()
        raw = (
            f"Message-ID: {message_id(first)}\r\n"
            "From: Customer Care <care@complaints.local>\r\n"
            "To: eva@example.hu\r\n"
            "Subject: =?utf-8?q?Panasz=C3=A1t_megkaptuk?=\r\n"
            " =?utf-8?q?_CMP-2026-000123?=\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            "\r\n"
            "Köszönjük, hogy jelezte.\r\n"
            ".a line that starts with a dot\r\n"
        ).encode()
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            await client.sendmail("care@complaints.local", ["eva@example.hu"], raw)
        assert spooled(maildir) == [raw]

        # followup's own notifier: the message reads back whole, in its language
        second = uuid.uuid4()
        notifier = SmtpNotifier(ServiceSettings(smtp_host="127.0.0.1", smtp_port=port))
        await notifier.send(
            Outbound(str(second), "email", "rui@example.pt", "A sua reclamação", "Obrigado.", "pt")
        )
        await notifier.close_idle()
        (sent,) = [m for m in spooled(maildir) if m != raw]
        mail = message_from_bytes(sent, policy=default)
        assert (mail["To"], mail["Subject"]) == ("rui@example.pt", "A sua reclamação")
        assert mail["Message-ID"] == message_id(second)
        assert mail.get_content().strip() == "Obrigado."  # type: ignore[attr-defined]
        assert len(mailbox.Maildir(maildir, create=False)) == 2

        # an erasure finds a customer's copies by their Message-ID, and leaves the others
        assert remove_from_spool(maildir, {first}) == 1
        assert spooled(maildir) == [sent]
    finally:
        server.close()
        await server.wait_closed()
