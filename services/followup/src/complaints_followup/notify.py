"""The notification port and its adapters: SMTP for e-mail, a webhook for other channels."""

from __future__ import annotations

import functools
import re
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, parseaddr
from typing import Protocol

import aiosmtplib
import httpx

from complaints_shared.settings import ServiceSettings


class DeliveryFailed(Exception):
    """The message was not handed over; it may be retried."""


class Undeliverable(DeliveryFailed):
    """No way to reach the customer on that channel: retrying will not help."""


class NotYetKnown(DeliveryFailed):
    """The complaint's contact details have not arrived yet: retried with backoff."""


@dataclass(frozen=True)
class Outbound:
    delivery_id: str
    channel: str
    to: str
    subject: str
    body: str
    language: str


def message_id(delivery_id: object) -> str:
    """The e-mail's Message-ID: the delivery's, so every copy of one delivery carries the same
    (receivers de-duplicate) and the spooled copies of a customer can be found."""
    return f"<{delivery_id}@complaints.local>"


def _one_line(value: str) -> str:
    """A header's value; a line break in it would start another header (injection)."""
    if "\r" in value or "\n" in value:
        raise ValueError("a header value holds a line break")
    return value


MAX_LINE = 78
"""Header lines are folded to this length where they can be (RFC 5322 2.1.1)."""

# RFC 2047 "Q" encoding of a header's text: the characters safe in any header (letters,
# digits, ``!*+-/``) as they are, a space as ``_``, every other byte ``=XX``
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = [chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256)]
_WORD_START, _WORD_END = "=?utf-8?q?", "?="
_WORD_MAX = 75  # an encoded word's length at most (RFC 2047, 2)


@functools.lru_cache(maxsize=4096)
def _q(char: str) -> str:
    """One character, Q-encoded (its UTF-8 bytes: never split across encoded words)."""
    return "".join(_Q_BYTE[b] for b in char.encode())


def _encoded_words(value: str, used: int) -> str:
    """``value`` as RFC 2047 encoded words, folded: each word whole characters and at most
    :data:`_WORD_MAX` long, each line at most :data:`MAX_LINE` (the first has ``used`` taken
    by its name)."""
    frame = len(_WORD_START) + len(_WORD_END)
    room = min(MAX_LINE - used, _WORD_MAX) - frame
    words: list[str] = []
    word: list[str] = []
    size = 0
    for char in value:
        q = _q(char)
        if size + len(q) > room and word:
            words.append(_WORD_START + "".join(word) + _WORD_END)
            word, size = [], 0
            room = min(MAX_LINE - 1, _WORD_MAX) - frame  # a line after the first: " word"
        word.append(q)
        size += len(q)
    words.append(_WORD_START + "".join(word) + _WORD_END)
    return "\r\n ".join(words)


def _folded(value: str, used: int) -> str:
    """An ASCII header's text folded before spaces, so that its lines keep to
    :data:`MAX_LINE` where a space allows (the first has ``used`` taken by its name); unfolded,
    it reads as ``value`` exactly."""
    if used + len(value) <= MAX_LINE:
        return value
    lines: list[str] = []
    line, width = "", MAX_LINE - used
    for i, part in enumerate(value.split(" ")):
        piece = part if i == 0 else " " + part
        if line.strip() and len(line) + len(piece) > width:  # never a line of spaces alone
            lines.append(line)
            line, width = piece, MAX_LINE
        else:
            line += piece
    lines.append(line)
    return "\r\n".join(lines)


def _text(name: str, value: str) -> str:
    """A header's text: as it is when ASCII (folded when long), else RFC 2047 encoded words;
    also when it holds ``=?``, which a mail client would read as the start of one."""
    used = len(name) + 2  # "Name: "
    if _one_line(value).isascii() and "=?" not in value:
        return _folded(value, used)
    return _encoded_words(value, used)


@functools.lru_cache(maxsize=8)
def _sender(sender: str) -> tuple[str, str]:
    """The From header of ``sender`` (``Name <address>``, a setting: read once) and its bare
    address, which the SMTP envelope carries."""
    name, address = parseaddr(_one_line(sender))
    return formataddr((name, address), charset="utf-8"), address


_LINE_END = re.compile(r"\r\n|\r|\n")


def email_message(sender: str, message: Outbound) -> bytes | EmailMessage:
    """The e-mail of ``message`` from ``sender`` (``Name <address>``): UTF-8 text, 8bit, its
    Message-ID and language; as the bytes SMTP carries (lines ended by CRLF).

    Written directly: the standard library's classes took about 190 µs a message to build and
    flatten (half of it folding an encoded subject), every acknowledgement and reminder paying
    it. To or from an address that is not ASCII, it is an ``EmailMessage`` instead, which the
    client writes as UTF-8 where the server speaks SMTPUTF8 (and refuses where it does not)."""
    from_header, address = _sender(sender)
    if not (message.to.isascii() and address.isascii()):
        return _internationalised(sender, message)
    head = (
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "Content-Transfer-Encoding: 8bit\r\n"
        f"From: {from_header}\r\n"
        f"To: {_one_line(message.to)}\r\n"
        f"Subject: {_text('Subject', message.subject)}\r\n"
        f"Message-ID: {message_id(message.delivery_id)}\r\n"
        f"Content-Language: {_text('Content-Language', message.language)}\r\n"
        "\r\n"
    )
    return (head + _LINE_END.sub("\r\n", message.body)).encode()


def _internationalised(sender: str, message: Outbound) -> EmailMessage:
    """The e-mail to or from an address that is not ASCII: ``EmailMessage`` writes it as UTF-8
    where the server speaks SMTPUTF8 (the plain classes would encode the address itself)."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.to
    mail["Subject"] = message.subject
    mail["Message-ID"] = message_id(message.delivery_id)
    mail.set_content(message.body, cte="8bit")
    mail["Content-Language"] = message.language  # after the body: setting it drops content-*
    return mail


class Notifier(Protocol):
    async def send(self, message: Outbound) -> None: ...

    async def close_idle(self) -> None:
        """Close the connections kept since the last call (the end of a worker's round)."""
        ...


class SmtpNotifier:
    """E-mail over SMTP.  Connections are kept between messages of one round of the worker
    (one per message handed over at the same time) and closed by :meth:`close_idle` at the
    end of the round, so none idles long enough for the server to drop it; a connection on
    which anything failed is closed, never used again."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        """The TLS settings of every connection: the system's trusted authorities (or those of
        ``SSL_CERT_FILE``), certificates and host names verified.  Made once: the client would
        otherwise load the trust store for each new connection (about 30 ms of CPU)."""
        if self._tls is None:
            self._tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        return self._tls

    async def _connection(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password,
            start_tls=s.smtp_starttls,
            tls_context=self._tls_context() if s.smtp_starttls else None,
            timeout=15,
        )
        await client.connect()  # STARTTLS and login as configured
        try:
            if client.is_ehlo_or_helo_needed:  # what the server speaks, before the first message
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    @staticmethod
    def _body_8bit(client: aiosmtplib.SMTP) -> list[str]:
        """The MAIL options of a message of 8bit text: declared so where the server knows
        8BITMIME (RFC 6152); sent as it is where it does not, as most servers take it."""
        return ["BODY=8BITMIME"] if client.supports_extension("8bitmime") else []

    async def send(self, message: Outbound) -> None:
        s = self.settings
        if not s.smtp_host:
            raise Undeliverable("no SMTP server configured (COMPLAINTS_SMTP_HOST)")
        mail = email_message(s.smtp_from, message)
        sender = _sender(s.smtp_from)[1]
        try:
            client = await self._connection()
            try:
                if isinstance(mail, bytes):
                    await client.sendmail(
                        sender, [message.to], mail, mail_options=self._body_8bit(client)
                    )
                else:  # the envelope given: the client would parse it back out of the headers
                    await client.send_message(mail, sender=sender, recipients=[message.to])
            except BaseException:
                client.close()
                raise
            self._idle.append(client)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise Undeliverable(f"recipient refused: {exc}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc

    async def close_idle(self) -> None:
        while self._idle:
            client = self._idle.pop()
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


class WebhookNotifier:
    """POSTs the message as JSON to a gateway (SMS, phone call list, chat, social, post).

    As for SMTP, connections are kept between the messages of one round of the worker (HTTP
    keep-alive: one per message handed over at the same time) and closed by
    :meth:`close_idle` at the end of the round; a connection on which a request failed is
    dropped by the client, never used again."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        self._client: httpx.AsyncClient | None = None
        self._tls: ssl.SSLContext | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            if self._tls is None:  # httpx's own trust (``SSL_CERT_FILE``, else certifi's), made
                self._tls = httpx.create_ssl_context()  # once: about 30 ms of CPU each time
            self._client = httpx.AsyncClient(timeout=15, verify=self._tls)
        return self._client

    async def send(self, message: Outbound) -> None:
        if not self.url:
            raise Undeliverable(
                f"no gateway for the {message.channel} channel (COMPLAINTS_WEBHOOK_URL)"
            )
        try:
            r = await self._http().post(
                self.url,
                json={
                    "id": message.delivery_id,
                    "channel": message.channel,
                    "to": message.to,
                    "subject": message.subject,
                    "body": message.body,
                    "language": message.language,
                },
                headers={"Idempotency-Key": message.delivery_id},
            )
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        if r.is_success:
            return
        if r.is_client_error and r.status_code != 429:
            raise Undeliverable(f"gateway refused: {r.status_code}")
        # a 5xx or 429, and a redirect too (a gateway moved: not a hand-over), is tried again
        raise DeliveryFailed(f"gateway answered {r.status_code}")

    async def close_idle(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class ChannelRouter:
    """E-mail goes over SMTP, every other channel to the webhook gateway."""

    def __init__(self, email: Notifier, other: Notifier) -> None:
        self.email = email
        self.other = other

    async def send(self, message: Outbound) -> None:
        await (self.email if message.channel == "email" else self.other).send(message)

    async def close_idle(self) -> None:
        await self.email.close_idle()
        await self.other.close_idle()
