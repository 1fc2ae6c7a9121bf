"""Text normalisation and lexicon matching that ignore case and accents."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, no accents, single spaces: ``"Péssimo  Dia"`` → ``"pessimo dia"``."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _SPACE.sub(" ", stripped).strip()


@dataclass(frozen=True)
class Lexicon:
    """Terms (words or phrases; a trailing ``*`` matches any ending) and their matcher."""

    terms: tuple[str, ...]
    pattern: re.Pattern[str] | None

    @classmethod
    def of(cls, terms: Iterable[str]) -> Lexicon:
        cleaned = tuple(dict.fromkeys(t.strip() for t in terms if t.strip()))
        if not cleaned:
            return cls((), None)
        parts = []
        for term in sorted(cleaned, key=len, reverse=True):
            stem = normalise(term.rstrip("*"))
            body = r"\s+".join(re.escape(w) for w in stem.split(" "))
            parts.append(rf"{body}\w*" if term.endswith("*") else rf"{body}(?!\w)")
        return cls(cleaned, re.compile(r"(?<!\w)(?:" + "|".join(parts) + ")"))

    def matches(self, normalised_text: str) -> list[str]:
        """The distinct matched words/phrases of an already normalised text, in order."""
        if self.pattern is None:
            return []
        return list(dict.fromkeys(m.group(0) for m in self.pattern.finditer(normalised_text)))
