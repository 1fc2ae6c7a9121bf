"""Lexicon matching that ignores case and accents (normalisation is the shared vocabulary's).

A lexicon's terms match only where a word starts, so a text is searched only there: its word
starts are found once and kept with the text (:class:`Words`) for the next lexicons asked
about it, and at each one only the terms that begin with its character are tried, in the
lexicon's own order (longest first).  That finds exactly what one search with all the terms
finds, in about 60% of its time: every rule asks about the same text, about twenty lexicons
in all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property

from complaints_shared.vocabulary import normalise

_WORD_START = re.compile(r"(?<!\w)\w")


def _word_starts(text: str) -> tuple[int, ...]:
    return tuple(m.start() for m in _WORD_START.finditer(text))


class Words(str):
    """A normalised text that keeps where its words start once a lexicon has looked (with the
    text itself: nothing about it is kept anywhere else)."""

    @cached_property
    def starts(self) -> tuple[int, ...]:
        return _word_starts(self)


def words(text: str) -> Words:
    """``text`` normalised, for every lexicon to match."""
    return Words(normalise(text))


@dataclass(frozen=True)
class Lexicon:
    """Terms (words or phrases; a trailing ``*`` matches any ending) and their matcher."""

    terms: tuple[str, ...]
    pattern: re.Pattern[str] | None
    # the terms by their first character, as patterns tried where a word starts with it (None:
    # a term starts with no word character, so only ``pattern`` finds what it matches)
    by_first: dict[str, re.Pattern[str]] | None = field(default=None, compare=False)

    @classmethod
    def of(cls, terms: Iterable[str]) -> Lexicon:
        cleaned = tuple(dict.fromkeys(t.strip() for t in terms if t.strip()))
        if not cleaned:
            return cls((), None)
        parts: list[tuple[str, str]] = []  # (the stem, its pattern), longest term first
        for term in sorted(cleaned, key=len, reverse=True):
            stem = normalise(term.rstrip("*"))
            body = r"\s+".join(re.escape(w) for w in stem.split(" "))
            parts.append((stem, rf"{body}\w*" if term.endswith("*") else rf"{body}(?!\w)"))
        pattern = re.compile(r"(?<!\w)(?:" + "|".join(p for _, p in parts) + ")")
        if not all(_WORD_START.match(stem) for stem, _ in parts):
            return cls(cleaned, pattern)
        grouped: dict[str, list[str]] = {}
        for stem, part in parts:
            grouped.setdefault(stem[0], []).append(part)
        by_first = {c: re.compile("(?:" + "|".join(ps) + ")") for c, ps in grouped.items()}
        return cls(cleaned, pattern, by_first)

    def matches(self, text: str) -> list[str]:
        """The distinct matched words/phrases of an already normalised text, in order (a
        :class:`Words` finds its word starts once for every lexicon)."""
        if self.pattern is None:
            return []
        if self.by_first is None:
            return list(dict.fromkeys(m.group(0) for m in self.pattern.finditer(text)))
        found: dict[str, None] = {}
        searched_to = 0  # as one search goes on after each match's end
        get = self.by_first.get
        for start in text.starts if isinstance(text, Words) else _word_starts(text):
            if start < searched_to or (term := get(text[start])) is None:
                continue
            if m := term.match(text, start):
                found[m.group(0)] = None
                searched_to = m.end()
        return list(found)
