"""Language identification of complaint texts (py3langid, its model ships in the package)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from py3langid.langid import MODEL_FILE, LanguageIdentifier

MIN_CONFIDENCE = 0.6


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
    """The most probable of ``languages`` for ``text``, with its normalised probability."""
    language, confidence = _identifier(tuple(sorted(languages))).classify(text)
    return Detection(str(language), float(confidence))


def warm_up(languages: tuple[str, ...]) -> None:
    """Load the model at start-up rather than in the first request."""
    detect_language("warm up", languages)
