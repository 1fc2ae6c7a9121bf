"""The e-mail followup hands to SMTP, read back as a mail client reads it."""

from __future__ import annotations

from email import message_from_bytes, message_from_string
from email.policy import default

import pytest
from aiosmtplib.email import flatten_message

from complaints_followup.notify import Outbound, email_message

BODY = (
    "Olá Rui,\n\nRecebemos a sua reclamação RC-2026-000042.\nhttps://care.example/s/surveys/abc\n"
)


def read_back(sender: str, message: Outbound):  # type: ignore[no-untyped-def]
    return message_from_bytes(flatten_message(email_message(sender, message)), policy=default)


def test_headers_and_body_read_back_as_written():
    out = Outbound("d-1", "email", "rui@example.pt", "Recebemos a sua reclamação", BODY, "pt")
    mail = read_back("Atendimento à cliente <care@example.pt>", out)
    assert mail["Subject"] == "Recebemos a sua reclamação"
    assert mail["From"].addresses[0].display_name == "Atendimento à cliente"
    assert mail["To"] == "rui@example.pt"
    assert mail["Message-ID"] == "<d-1@complaints.local>"
    assert mail["Content-Language"] == "pt"
    assert mail["Content-Transfer-Encoding"] == "8bit"  # the link stays whole as stored
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content() == BODY


def test_an_ascii_subject_is_not_encoded():
    out = Outbound("d-2", "email", "eva@example.hu", "Your complaint", "Hello", "en")
    raw = flatten_message(email_message("care@example.pt", out)).replace(b"\r\n", b"\n")
    assert b"\nSubject: Your complaint\n" in raw  # SMTP sends the lines ended by CRLF


@pytest.mark.parametrize(
    "field", ["subject", "to", "language"], ids=["subject", "recipient", "language"]
)
def test_a_line_break_in_a_header_is_refused_not_sent_as_another_header(field):
    values = {"subject": "Olá", "to": "ilse@example.de", "language": "de"}
    values[field] = values[field] + "\nBcc: x@example.org"
    out = Outbound("d-3", "email", values["to"], values["subject"], "Hallo", values["language"])
    with pytest.raises(ValueError, match="line break"):
        email_message("care@example.pt", out)


def test_an_address_that_is_not_ascii_is_written_as_utf8_where_the_server_allows():
    out = Outbound("d-4", "email", "joão@exemplo.pt", "Recebemos a sua reclamação", BODY, "pt")
    raw = flatten_message(email_message("care@example.pt", out), utf8=True)
    mail = message_from_string(raw.decode(), policy=default)  # as an SMTPUTF8 client reads it
    assert "To: joão@exemplo.pt".encode() in raw
    assert mail["To"].addresses[0].addr_spec == "joão@exemplo.pt"
    assert mail["Subject"] == "Recebemos a sua reclamação"
    assert mail["Content-Language"] == "pt"
    assert BODY.replace("\n", "\r\n").encode() in raw  # 8bit UTF-8, as written
    with pytest.raises(ValueError):
        email_message(
            "care@example.pt", Outbound("d-5", "email", "joão@x.pt\nBcc: y", "s", "b", "pt")
        )
