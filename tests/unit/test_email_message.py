"""The e-mail followup hands to SMTP, read back as a mail client reads it."""

from __future__ import annotations

from email import message_from_bytes, message_from_string
from email.policy import default

import pytest
from aiosmtplib.email import flatten_message
from hypothesis import given
from hypothesis import strategies as st

from complaints_followup.notify import MAX_LINE, Outbound, email_message

BODY = (
    "Olá Rui,\n\nRecebemos a sua reclamação RC-2026-000042.\nhttps://care.example/s/surveys/abc\n"
)


def wire(sender: str, message: Outbound) -> bytes:
    """The bytes handed to SMTP."""
    mail = email_message(sender, message)
    return mail if isinstance(mail, bytes) else flatten_message(mail)


def read_back(sender: str, message: Outbound):  # type: ignore[no-untyped-def]
    """The e-mail as a mail client reads it (which takes CRLF as the end of a line)."""
    raw = wire(sender, message)
    return message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=default)


def header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


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
    raw = wire("care@example.pt", out)
    assert b"\r\nSubject: Your complaint\r\n" in raw  # lines ended by CRLF, as SMTP sends them


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


def test_every_line_ends_with_crlf_whatever_the_body_used():
    out = Outbound("d-6", "email", "eva@example.hu", "Panasz", "egy\nkettő\r\nhárom\rnégy", "hu")
    raw = wire("care@example.pt", out)
    assert raw.endswith("egy\r\nkettő\r\nhárom\r\nnégy".encode())
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")


def test_a_body_line_that_starts_with_from_is_sent_as_written():
    body = "Hello,\nFrom now on your case is with us.\n"
    out = Outbound("d-7", "email", "eva@example.hu", "Your complaint", body, "en")
    assert read_back("care@example.pt", out).get_content() == body  # not ">From" (mbox)


def test_a_subject_that_looks_like_an_encoded_word_reads_back_as_written():
    subject = "Re: =?utf-8?q?hello?= is what you wrote"
    out = Outbound("d-8", "email", "eva@example.hu", subject, "Hello", "en")
    assert read_back("care@example.pt", out)["Subject"] == subject


@given(
    subject=st.text(
        st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=300
    ).filter(lambda s: s.strip() == s and "  " not in s)
)
def test_any_subject_reads_back_as_written_in_lines_a_mail_client_takes(subject):
    out = Outbound("d-9", "email", "eva@example.hu", subject, "Hello", "en")
    raw = wire("Ügyfélszolgálat <care@example.hu>", out)
    lines = header_lines(raw)
    start = next(i for i, line in enumerate(lines) if line.startswith(b"Subject: "))
    subject_lines = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(b" "):
            break
        subject_lines.append(line)
    assert all(line.strip() for line in subject_lines)  # no line of spaces alone
    if not subject.isascii():  # encoded words: each at most 75 long, the lines at most 78
        assert all(len(line) <= MAX_LINE for line in subject_lines)
        assert all(len(word) <= 75 for line in subject_lines for word in line.split(b" ")[-1:])
    elif " " in subject and len(subject) > MAX_LINE:  # folded where a space allows
        assert len(subject_lines) > 1
    assert read_back("Ügyfélszolgálat <care@example.hu>", out)["Subject"] == subject
