"""Intake's pure rules: matching, suggestions, alert reasons, the receive decision."""

from __future__ import annotations

import re
import sys
import unicodedata
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from rapidfuzz import fuzz

from complaints_intake.domain import ComplaintCreate, Earlier, History, probable_duplicate, receive
from complaints_intake.language import SAMPLE_CHARACTERS, Detection, detect_language
from complaints_intake.messages import load_templates
from complaints_intake.rules import SHOUTING_MIN_LETTERS, SHOUTING_RATIO, IntakeRules
from complaints_intake.text import Lexicon, Lexicons, words
from complaints_intake.timeline import summarise
from complaints_shared.errors import InputRejected
from complaints_shared.events import UnknownEvent
from complaints_shared.events.intake import (
    ComplaintAcknowledged,
    ComplaintAlertRaised,
    ComplaintReceived,
)
from complaints_shared.events.resolution import CaseEscalated
from complaints_shared.policy import Policy, load_policy
from complaints_shared.vocabulary import normalise

POLICY = Policy()
RULES = IntakeRules.load(POLICY.intake)
TEMPLATES = load_templates(POLICY.intake.languages)
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday


def test_normalise_and_lexicon_ignore_case_accents_and_endings():
    assert normalise("  Péssimo   ATENDIMENTO ") == "pessimo atendimento"
    lex = Lexicon.of(["suj*", "nao funciona", "bill"])
    assert lex.matches(normalise("O chão estava SUJÍSSIMO e a máquina não funciona")) == [
        "sujissimo",
        "nao funciona",
    ]
    assert lex.matches("billing and bills") == []  # no star: whole words only


_LEXICONS = [  # the shipped ones, and one whose phrases hold its other terms
    Lexicon.of(["nao funciona", "funciona", "func*", "nao", "a b c", "b", "b c*"]),
    *RULES.categories.values(),
    *(lex for _, lex in RULES.weighted_negative),
    *RULES.public_exposure.values(),
    *RULES.safety.values(),
    # terms of one letter that match on: tried also where the text's next two letters start
    # other terms, of the lexicon's own and of others
    Lexicon.of(["b*", "bad", "ba c"]),
    Lexicon.of(["c*"]),
]
_PIECES = sorted(
    {
        piece
        for lex in _LEXICONS
        for term in lex.terms
        for word in normalise(term.rstrip("*")).split(" ")
        for piece in (word, word[:3], f"{word}s", f"x{word}")
    }
)


def _one_search(lex: Lexicon, text: str) -> list[str]:
    """What the lexicon's single pattern finds, searched at every position of ``text``."""
    assert lex.pattern is not None
    return list(dict.fromkeys(m.group(0) for m in lex.pattern.finditer(text)))


@given(
    st.lists(
        st.sampled_from(_PIECES) | st.sampled_from([" ", "  ", "-", ".", ", ", "'", "_", "1"]),
        max_size=40,
    ),
    st.sampled_from(range(len(_LEXICONS))),
)
def test_a_lexicon_finds_at_word_starts_what_one_search_of_the_text_finds(pieces, which):
    """Words, stems, phrases, parts and extensions of the terms, run together or apart by
    spaces, punctuation and digits: matching only where a word starts finds the same."""
    lex, text = _LEXICONS[which], "".join(pieces)
    assert lex.matches(text) == _one_search(lex, text)


_ALL = Lexicons(_LEXICONS)


@given(
    st.lists(
        st.sampled_from(_PIECES) | st.sampled_from([" ", "  ", "-", ".", ", ", "'", "_", "1"]),
        max_size=40,
    )
)
def test_lexicons_asked_at_once_find_what_each_one_search_finds(pieces):
    """The same texts, every lexicon at once (a term of one letter, a phrase whose first word
    has one letter, a term that starts with no letter among them)."""
    text = "".join(pieces)
    expected = [_one_search(lex, text) for lex in _LEXICONS]
    assert _ALL.matches(text) == expected
    assert _ALL.matches(words(text)) == [_one_search(lex, words(text)) for lex in _LEXICONS]


def test_lexicons_asked_at_once_include_one_whose_terms_start_with_no_letter():
    lexicons = Lexicons([Lexicon.of(["#fail", "bad"]), Lexicon.of(["b", "bad*"]), Lexicon.of([])])
    assert lexicons.matches("so #fail, bad badly b") == [
        ["#fail", "bad"],
        ["bad", "badly", "b"],
        [],
    ]


def test_a_match_hides_the_terms_within_it_and_a_term_may_start_with_no_letter():
    assert _LEXICONS[0].matches("nao funciona, a b c b cd") == ["nao funciona", "a b c", "b cd"]
    lex = Lexicon.of(["#fail", "@shop*", "bad"])
    assert lex.matches("so #fail, bad @shopping") == ["#fail", "bad", "@shopping"]
    assert lex.matches("so#fail") == _one_search(lex, "so#fail")


@given(st.text() | st.text(st.characters(max_codepoint=127)))
def test_normalise_is_the_case_folded_decomposition_without_marks_and_extra_spaces(text):
    """ASCII text takes a shorter way; every text gives what the definition gives."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    unmarked = "".join(c for c in decomposed if not unicodedata.combining(c))
    assert normalise(text) == re.sub(r"\s+", " ", unmarked).strip()
    assert normalise(" Ab\tC\n\x0bd  ") == "ab c d"


@pytest.mark.parametrize("plane", ["basic", "all"])
def test_normalise_gives_the_definition_for_every_character(plane):
    """Every code point after a letter: those that stay in the Basic Multilingual Plane once
    decomposed (their marks taken off at once), and all of them in one text (the marks beyond
    it, one by one)."""
    chars = [chr(cp) for cp in range(sys.maxunicode + 1)]
    if plane == "basic":
        chars = [c for c in chars if max(unicodedata.normalize("NFKD", c.casefold())) <= "\uffff"]
    text = "".join(f"a{c}" for c in chars)
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    unmarked = "".join(c for c in decomposed if not unicodedata.combining(c))
    assert normalise(text) == re.sub(r"\s+", " ", unmarked).strip()


def test_rules_given_the_normalised_text_decide_as_without_it():
    text = "A torradeira da LOJA pegou FOGO!!! Vou ao Facebook e à DECO, é uma vergonha"
    norm = normalise(text)
    assert RULES.signals(text, norm) == RULES.signals(text)
    assert RULES.suggest_category(text, norm) == RULES.suggest_category(text)
    assert RULES.negative_wording(text, norm) == RULES.negative_wording(text)
    assert RULES.signals(text).safety and RULES.negative_wording(text).score >= 2


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("The shelf price was different, I was overcharged", "pricing_error"),
        ("O produto estava esgotado e indisponível", "product_availability"),
        ("El baño estaba sucio y con mal olor", "cleanliness"),
        ("Egy órát vártam a sorban", "waiting_time"),
        ("A csomag nem érkezett meg, a futár nem jött", "delivery"),
        ("Nothing in particular to say", "other"),
        # misses seen in use
        ("Zapatillas con la suela despegada", "product_defect"),
        ("Aspirador não liga", "product_defect"),
        ("The loaf I bought was mouldy", "product_defect"),
    ],
)
def test_category_suggestion_across_languages(text, category):
    assert RULES.suggest_category(text)[0] == category


@pytest.mark.parametrize(
    ("taxonomy", "text", "category"),
    [
        (
            "financial_services",
            "I was charged a late payment fee on my credit card",
            "fees_interest",
        ),
        (
            "financial_services",
            "Debt collector keeps calling about a debt not owed",
            "debt_collection",
        ),
        ("telecom", "Sem rede no telemóvel, as chamadas caem", "network_coverage"),
        ("telecom", "Internet muy lenta, se cae la conexión", "internet_speed_outage"),
        ("utilities", "Nincs áram második napja", "supply_interruption"),
        ("utilities", "Brown water from the tap, it smells", "water_quality"),
    ],
)
def test_each_shipped_taxonomy_suggests_its_own_categories(taxonomy, text, category):
    policy = Policy.model_validate({"intake": {"taxonomy": taxonomy}})
    assert "other" in policy.intake.categories and category in policy.intake.categories
    assert IntakeRules.load(policy.intake).suggest_category(text)[0] == category


def test_a_late_payment_is_no_delivery_for_a_bank():
    bank = Policy.model_validate({"intake": {"taxonomy": "financial_services"}})
    text = "A late payment was reported although I paid on time"
    assert IntakeRules.load(bank.intake).suggest_category(text)[0] != "delivery"


def test_a_business_brings_its_own_taxonomy(tmp_path):
    (tmp_path / "hotel.toml").write_text(
        '[categories.room]\ndescription = "rooms"\nkeywords = ["room", "bed*"]\n'
    )
    (tmp_path / "policy.toml").write_text('[intake]\ntaxonomy = "hotel.toml"\n')
    policy = load_policy(tmp_path / "policy.toml")
    assert policy.intake.categories == ("room", "other")
    assert IntakeRules.load(policy.intake).suggest_category("The bedsheets were torn")[0] == "room"
    (tmp_path / "policy.toml").write_text('[intake]\ntaxonomy = "hotels"\n')
    with pytest.raises(ValueError, match="unknown taxonomy"):
        load_policy(tmp_path / "policy.toml")


@pytest.mark.parametrize(
    ("text", "public", "safety"),
    [
        (
            "My six-year-old burned his hand on your overheating charger, we went to A&E",
            (),
            None,
        ),
        ("I will post this on Twitter and call my lawyer", ("social_media", "legal"), ()),
        (
            "Vou fazer queixa no Livro de Reclamações e falar com a imprensa",
            ("press", "regulator"),
            (),
        ),
        ("Mi hijo se quemó con la tetera y fuimos a urgencias", (), None),
        ("A töltő túlmelegedett és megégett a kezem", (), None),
        ("My son loves your shop", (), ()),  # a child alone is no safety incident
        ("Nothing happened, the price was wrong", (), ()),
    ],
)
def test_public_exposure_and_safety_from_the_text(text, public, safety):
    found = RULES.signals(text)
    assert found.public_exposure == public
    if safety is None:  # some safety signal, with a burn among them
        assert "burn_fire" in found.safety
    else:
        assert found.safety == safety


def test_a_safety_story_without_the_flag_alerts_and_is_critical_as_a_suggestion():
    d = decide(
        subject="Charger",
        description="My six-year-old burned his hand on your overheating charger, we went to A&E",
    )
    received = next(e for e in d.events if isinstance(e, ComplaintReceived))
    alert = next(e for e in d.events if isinstance(e, ComplaintAlertRaised))
    assert received.severity == "critical" and received.severity_suggested
    assert received.safety_incident is False  # the fact stays the customer's or an agent's
    assert "safety_suggested" in alert.reasons
    assert {"burn_fire", "medical_care", "child"} <= set(alert.details.safety)


def test_a_threat_to_go_public_alerts_with_its_reason_codes():
    d = decide(description="Se não resolverem, vou às redes sociais e à DECO.")
    alert = next(e for e in d.events if isinstance(e, ComplaintAlertRaised))
    assert "public_exposure_suggested" in alert.reasons
    assert alert.details.public_exposure == ("social_media", "regulator")
    assert d.severity == "high"


def test_negative_wording_scores():
    assert RULES.negative_wording("Thanks, all fine").score == 0
    assert RULES.negative_wording("Terrible service").score == 1
    assert RULES.negative_wording("Isto é uma vergonha").score == 2
    shouting = RULES.negative_wording("I WANT MY MONEY BACK RIGHT NOW PLEASE!!!")
    assert shouting.score == 2 and "(shouting)" in shouting.terms


@example("ÉÉÉÉÉÉÉÉÉÉÉÉÉÉaaaaaaa")  # capitals beyond ASCII
@example("ⒶⒶⒶⒶⒶⒶⒶⒶⒶⒶⒶⒶⒶⒶaaaaaaaBBBBBBBBBBBBBB")
@given(st.text(st.sampled_from("aBcDéÉßΣ\u03c3 Ⓐⓐ1!ǅ"), min_size=15, max_size=60))
def test_shouting_is_most_letters_in_capitals(text):
    """Letters only are counted (a capital-looking symbol such as Ⓐ is none)."""
    letters = [c for c in text if c.isalpha()]
    shouting = len(letters) >= SHOUTING_MIN_LETTERS and (
        sum(c.isupper() for c in letters) / len(letters) >= SHOUTING_RATIO
    )
    assert ("(shouting)" in RULES.negative_wording(text).terms) == shouting


_WORDS = st.sampled_from(["late", "parcel", "Atraso", "encomenda", "é", "rude", "staff", "x"])
_TEXTS = st.lists(_WORDS, max_size=12).map(" ".join)


@given(
    _TEXTS, st.lists(st.tuples(_TEXTS, _TEXTS), max_size=5), st.sampled_from([0.5, 0.57, 0.85, 1])
)
def test_the_probable_duplicate_is_the_first_most_alike_earlier_complaint(
    text, earlier, similarity
):
    """What scoring each earlier complaint in turn gives: the first with the best score, if that
    is ``similarity`` or more."""
    candidates = [Earlier(uuid.uuid4(), subject, description) for subject, description in earlier]
    best: tuple[float, uuid.UUID | None] = (0.0, None)
    for c in candidates:
        score = fuzz.token_sort_ratio(normalise(text), normalise(f"{c.subject}\n{c.description}"))
        if score / 100 >= similarity and score > best[0]:
            best = (score, c.complaint_id)
    assert probable_duplicate(text, candidates, similarity) == best[1]


def decide(**over):  # type: ignore[no-untyped-def]
    body = {
        "channel": "web",
        "customer": {"name": "Ana"},
        "subject": "Preço",
        "description": "O preço na prateleira era outro.",
        **over,
    }
    return receive(
        ComplaintCreate.model_validate(body),
        reference="CMP-2026-000001",
        received_at=NOW,
        history=History(0, None),
        detection=Detection("pt", 0.99),
        policy=POLICY,
        rules=RULES,
        templates=TEMPLATES,
    )


def test_receive_detects_language_suggests_and_acknowledges():
    d = decide()
    received, ack = d.events[0], d.events[1]
    assert isinstance(received, ComplaintReceived) and isinstance(ack, ComplaintAcknowledged)
    assert received.language == "pt" and received.language_detected is True
    assert received.category == "pricing_error" and received.category_suggested is True
    # medium: 24 business hours (Mon-Fri 09-17, UTC) from Monday 10:00 → Thursday 10:00
    assert ack.first_response_due == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert ack.first_response_due == received.first_response_due
    assert ack.channel == "web" and "CMP-2026-000001" in ack.message.body


def test_receive_falls_back_to_the_default_language_when_unsure():
    d = receive(
        ComplaintCreate.model_validate(
            {"channel": "web", "customer": {"name": "A"}, "subject": "x", "description": "y"}
        ),
        reference="R",
        received_at=NOW,
        history=History(0, None),
        detection=Detection("hu", 0.3),
        policy=POLICY,
        rules=RULES,
        templates=TEMPLATES,
    )
    assert d.language == "en"


def test_a_complaint_is_in_the_language_it_opens_in():
    """What it quotes further down (an earlier mail, a signature) does not sway it."""
    own = "A minha encomenda chegou com duas semanas de atraso e ninguém me respondeu. " * 14
    quoted = "\n> Dear customer, thank you for your order. It will be delivered soon. " * 60
    languages = POLICY.intake.languages
    assert len(own) >= SAMPLE_CHARACTERS and len(quoted) > 3 * len(own)
    assert detect_language(own + quoted, languages).language == "pt"
    assert detect_language(quoted, languages).language == "en"


def test_replying_by_email_needs_an_address():
    with pytest.raises(InputRejected) as err:
        decide(customer={"name": "Ana", "preferred_channel": "email"})
    assert err.value.field == "body.customer.email"


def test_repeat_complainant_counts_this_complaint():
    d = receive(
        ComplaintCreate.model_validate(
            {"channel": "web", "customer": {"id": "9"}, "subject": "x", "description": "y"}
        ),
        reference="R",
        received_at=NOW,
        history=History(recent_count=2, duplicate_of=None),
        detection=None,
        policy=POLICY,
        rules=RULES,
        templates=TEMPLATES,
    )
    assert d.alerts == ["repeat_complainant"]
    alert = d.events[-1]
    assert isinstance(alert, ComplaintAlertRaised)
    assert alert.details.complaints_in_window == 3


def test_timeline_summaries_read_like_sentences():
    e = CaseEscalated(
        complaint_id=uuid.uuid4(),
        level="team_lead",
        reason="resolution deadline breached",
        deadline="resolution",
        ref="0",
    )
    assert summarise(e) == "Escalated to team lead"
    assert summarise(UnknownEvent(type_name="SomethingNewHappened")) == "Something new happened"
