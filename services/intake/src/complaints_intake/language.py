"""Language identification of complaint texts (py3langid, its model ships in the package)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

MIN_CONFIDENCE = 0.6

SAMPLE_CHARACTERS = 1000
"""A text's language is read from its first this many characters: the language it opens in
(what a long complaint quotes further down, an earlier mail or a signature, does not sway
it), at a cost that stops growing with the text.  The identifier walks the text's bytes in
plain Python: 5,000 characters took 630-790 µs, 1,000 150-220 (Portuguese, Hungarian,
English, Spanish)."""


@dataclass(frozen=True, slots=True)
class Detection:
    language: str
    confidence: float


@lru_cache(maxsize=8)
def _identifier(languages: tuple[str, ...]) -> LanguageIdentifier:
    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(languages))
    return identifier


def detect_language(text: str, languages: tuple[str, ...]) -> Detection:
    """The most probable of ``languages`` for ``text`` (its first :data:`SAMPLE_CHARACTERS`),
    with its normalised probability."""
    identifier = _identifier(tuple(sorted(languages)))
    language, confidence = identifier.classify(text[:SAMPLE_CHARACTERS])
    return Detection(str(language), float(confidence))


def warm_up(languages: tuple[str, ...]) -> None:
    """Load the model at start-up rather than in the first request."""
    detect_language("warm up", languages)
