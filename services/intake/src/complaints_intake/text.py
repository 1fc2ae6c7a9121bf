"""Lexicon matching that ignores case and accents (normalisation is the shared vocabulary's).

A lexicon's terms match only where a word starts, so a text is searched only there: its word
starts are found once and kept with the text (:class:`Words`).  :class:`Lexicons` asks several
lexicons about a text in one walk over them: at each start, only the lexicons with a term that
can start there (by the text's next two characters) try those terms, in each lexicon's own
order (longest first).  That finds exactly what one search of the text with each lexicon's
terms finds, in about a fifth of the time of asking the lexicons one by one (the shipped
rules' 21 lexicons, 571 terms; texts of 100 to 5,000 characters, finding the word starts
included); a lone lexicon is asked the same way.
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

    @cached_property
    def found(self) -> dict[Lexicons, Found]:
        """What each :class:`Lexicons` asked about the text found (kept with the text)."""
        return {}


def words(text: str) -> Words:
    """``text`` normalised, for every lexicon to match."""
    return Words(normalise(text))


@dataclass(frozen=True)
class Lexicon:
    """Terms (words or phrases; a trailing ``*`` matches any ending) and their matcher."""

    terms: tuple[str, ...]
    pattern: re.Pattern[str] | None  # every term, searched anywhere (None: no terms)
    # (the stem, its pattern) of each term, longest first
    parts: tuple[tuple[str, str], ...] = field(default=(), compare=False)

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
        return cls(cleaned, pattern, tuple(parts))

    @cached_property
    def _alone(self) -> Lexicons:
        return Lexicons([self])

    def matches(self, text: str) -> list[str]:
        """The distinct matched words/phrases of an already normalised text, in order (a
        :class:`Words` finds its word starts once for every lexicon)."""
        return list(self._alone.search(text)[0])


def _key(stem: str) -> str:
    """Where a term can match, by the text there: its stem's first two characters when both
    are word characters (the text holds them as they are), else its first."""
    two = stem[:2]
    return two if len(two) == 2 and _WORD_CHARS.fullmatch(two) else stem[:1]


_WORD_CHARS = re.compile(r"\w\w")

Candidates = tuple[tuple[int, re.Pattern[str]], ...]  # (which lexicon, its terms to try)
# the candidates at a key, with one pattern of all their terms: where it does not match (at most
# starts), none of them does, and none is tried
Keyed = tuple[re.Pattern[str], Candidates]
Found = tuple[tuple[str, ...], ...]  # each lexicon's matches


class Lexicons:
    """Several lexicons asked about one normalised text at once (``matches``: each one's
    :meth:`Lexicon.matches`, in their order).

    The text's word starts are walked once. At each, the text's next two characters name the
    lexicons with a term that can match there, each with just those terms, in its own order
    (longest first); a term whose stem does not start with two word characters (a one-letter
    word, a phrase's one-letter first word) is tried by its first character. Each lexicon goes
    on after the end of its own last match, as :meth:`Lexicon.matches` does.  A start where no
    term of any of those lexicons matches (most of them) costs one match of all their terms at
    once: with the shipped rules, 5,000 characters of a complaint took 0.4 of the time of
    trying each lexicon there."""

    def __init__(self, lexicons: Iterable[Lexicon]) -> None:
        self.lexicons = tuple(lexicons)
        by_two: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        by_one: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
        # lexicons with a term that starts with no word character: searched everywhere
        self._searched: list[int] = []
        for i, lex in enumerate(self.lexicons):
            if lex.pattern is None:
                continue
            if not all(_WORD_START.match(stem) for stem, _ in lex.parts):
                self._searched.append(i)
                continue
            keys = [_key(stem) for stem, _ in lex.parts]
            for key in dict.fromkeys(keys):
                # and the terms keyed by its first character alone, which may match there too
                parts = [
                    part for (_, part), k in zip(lex.parts, keys, strict=True) if k in (key, key[0])
                ]
                pattern = re.compile("(?:" + "|".join(parts) + ")")
                (by_two if len(key) == 2 else by_one).setdefault(key, []).append((i, pattern))
        # a lexicon whose only terms at a key of others' are keyed by its first character
        for key, found in by_two.items():
            named = {i for i, _ in found}
            found += [(i, p) for i, p in by_one.get(key[0], ()) if i not in named]
        self._by_two: dict[str, Keyed] = {k: _keyed(v) for k, v in by_two.items()}
        self._by_one: dict[str, Keyed] = {k: _keyed(v) for k, v in by_one.items()}

    def matches(self, text: str) -> list[list[str]]:
        """Each lexicon's distinct matches in ``text`` (normalised), in order."""
        return [list(f) for f in self.search(text)]

    def search(self, text: str) -> Found:
        """:meth:`matches`, as a :class:`Words` keeps them for the next call (so immutable:
        every caller gets the same)."""
        if isinstance(text, Words):
            kept = text.found.get(self)
            if kept is None:
                kept = text.found[self] = self._matches(text, text.starts)
            return kept
        return self._matches(text, _word_starts(text))

    def _matches(self, text: str, starts: tuple[int, ...]) -> Found:
        found: list[dict[str, None]] = [{} for _ in self.lexicons]
        searched_to = [0] * len(self.lexicons)  # each lexicon's search goes on after its match
        two, one = self._by_two.get, self._by_one.get
        for start in starts:
            keyed = two(text[start : start + 2]) or one(text[start])
            if keyed is None or keyed[0].match(text, start) is None:
                continue
            for i, term in keyed[1]:
                if start >= searched_to[i] and (m := term.match(text, start)):
                    found[i][m.group(0)] = None
                    searched_to[i] = m.end()
        out = [tuple(f) for f in found]
        for i in self._searched:
            pattern = self.lexicons[i].pattern
            assert pattern is not None
            out[i] = tuple(dict.fromkeys(m.group(0) for m in pattern.finditer(text)))
        return tuple(out)


def _keyed(candidates: list[tuple[int, re.Pattern[str]]]) -> Keyed:
    """``candidates`` with the one pattern that matches where any of them does (a lone
    candidate's own: the same source, which ``re`` compiles once)."""
    return re.compile("|".join(p.pattern for _, p in candidates)), tuple(candidates)
