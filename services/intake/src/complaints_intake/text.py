"""Lexicon matching that ignores case and accents (normalisation is the shared vocabulary's)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from complaints_shared.vocabulary import normalise


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
