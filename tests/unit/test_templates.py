"""A service's customer texts load at start, with what formatting them in their languages
needs: no customer's message waits for it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from babel import localedata
from babel.dates import format_date
from babel.numbers import format_currency

from complaints_followup.messages import load_texts
from complaints_intake.messages import load_templates
from complaints_resolution.messages import Messages
from complaints_shared.policy import IntakePolicy

LANGUAGES = IntakePolicy().languages  # the default policy's
LOADERS: dict[str, Callable[[], Any]] = {
    "intake": lambda: load_templates(LANGUAGES),
    "resolution": lambda: Messages.load(LANGUAGES, "en"),
    "followup": lambda: load_texts(LANGUAGES),
}


@pytest.mark.parametrize("service", list(LOADERS))
def test_loading_a_services_texts_reads_the_formats_of_their_languages(service, monkeypatch):
    """The formatting library reads a language's data from disk the first time it formats in
    it (5-14 ms a language): the first acknowledgement in a language waited for that inside
    its transaction, with the other complaints of its group."""
    monkeypatch.setattr(localedata, "_cache", {})  # as a process that has formatted nothing yet
    LOADERS[service]()
    read: list[str] = []
    load = localedata.pickle.load

    def reading(file: Any) -> Any:
        read.append(file.name)
        return load(file)

    monkeypatch.setattr(localedata.pickle, "load", reading)
    for language in LANGUAGES:
        format_date(date(2026, 3, 12), format="long", locale=language)
        format_currency(Decimal("12.50"), "EUR", locale=language)
    assert read == []
