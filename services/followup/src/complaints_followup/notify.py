"""The notification port and its adapters: SMTP for e-mail, a webhook for other channels."""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import EmailMessage, Message
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


_UTF8_8BIT = Charset("utf-8")
# 8bit: readable as stored, links stay whole (None is documented; the stubs only know int)
_UTF8_8BIT.body_encoding = None  # type: ignore[assignment]
# headers: quoted-printable, without first measuring base64 against it for every subject
_UTF8_QP = Charset("utf-8")
_UTF8_QP.header_encoding = QP


def _one_line(value: str) -> str:
    """A header's value; a line break in it would start another header (injection)."""
    if "\r" in value or "\n" in value:
        raise ValueError("a header value holds a line break")
    return value


def _subject(value: str) -> str:
    """The subject header's text, RFC 2047-encoded (and folded) when it is not ASCII."""
    if _one_line(value).isascii():
        return value
    return Header(value, _UTF8_QP, header_name="Subject").encode()


@functools.lru_cache(maxsize=8)
def _sender(sender: str) -> tuple[str, str]:
    """The From header of ``sender`` (``Name <address>``, a setting: read once) and its bare
    address, which the SMTP envelope carries."""
    name, address = parseaddr(_one_line(sender))
    return formataddr((name, address), charset="utf-8"), address


def email_message(sender: str, message: Outbound) -> Message:
    """The e-mail of ``message`` from ``sender`` (``Name <address>``): UTF-8 text, 8bit, its
    Message-ID and language.

    Built with the standard library's plain MIME classes: the ``EmailMessage`` API parses and
    re-folds every header it is given, about four times the CPU per message, built and flattened.
    """
    from_header, address = _sender(sender)
    if not (message.to.isascii() and address.isascii()):
        return _internationalised(sender, message)
    mail = Message()
    mail["MIME-Version"] = "1.0"
    mail.set_payload(message.body, _UTF8_8BIT)  # text/plain; charset="utf-8"
    mail["From"] = from_header
    mail["To"] = _one_line(message.to)
    mail["Subject"] = _subject(message.subject)
    mail["Message-ID"] = message_id(message.delivery_id)
    mail["Content-Language"] = _one_line(message.language)
    return mail


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
        return client

    async def send(self, message: Outbound) -> None:
        s = self.settings
        if not s.smtp_host:
            raise Undeliverable("no SMTP server configured (COMPLAINTS_SMTP_HOST)")
        mail = email_message(s.smtp_from, message)
        try:
            client = await self._connection()
            try:
                # the envelope given: the client would parse it back out of the headers
                await client.send_message(
                    mail, sender=_sender(s.smtp_from)[1], recipients=[message.to]
                )
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
