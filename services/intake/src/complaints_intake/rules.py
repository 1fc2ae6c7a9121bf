"""Suggestion and alert rules: category keywords and strongly negative wording (data files)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from complaints_intake.text import Lexicon
from complaints_shared.datafiles import read_data_file
from complaints_shared.vocabulary import normalise

SHOUTING_RATIO = 0.6
SHOUTING_MIN_LETTERS = 20


def _load(name: str, override_dir: Path | None) -> dict[str, Any]:
    return tomllib.loads(read_data_file("complaints_intake", "rules", name, override_dir))


@dataclass(frozen=True)
class NegativeWording:
    score: int
    terms: list[str]


@dataclass(frozen=True)
class IntakeRules:
    categories: dict[str, Lexicon]
    weighted_negative: tuple[tuple[int, Lexicon], ...]

    @classmethod
    def load(
        cls, known_categories: tuple[str, ...], override_dir: Path | None = None
    ) -> IntakeRules:
        raw = _load("categories.toml", override_dir)
        unknown = set(raw) - set(known_categories)
        if unknown:
            raise ValueError(
                f"category keywords for categories not in the policy: {sorted(unknown)}"
            )
        negative = _load("negative_wording.toml", override_dir)
        return cls(
            {c: Lexicon.of(raw.get(c, [])) for c in known_categories},
            tuple((int(v["weight"]), Lexicon.of(v["terms"])) for v in negative.values()),
        )

    def suggest_category(self, text: str) -> tuple[str, list[str]]:
        """The category with most keyword matches (ties: policy order), else ``other``."""
        norm = normalise(text)
        best, best_hits = "other", list[str]()
        for category, lexicon in self.categories.items():
            hits = lexicon.matches(norm)
            if len(hits) > len(best_hits):
                best, best_hits = category, hits
        return best, best_hits

    def negative_wording(self, text: str) -> NegativeWording:
        norm = normalise(text)
        score, terms = 0, []
        for weight, lexicon in self.weighted_negative:
            hits = lexicon.matches(norm)
            score += weight * len(hits)
            terms.extend(hits)
        letters = [c for c in text if c.isalpha()]
        if len(letters) >= SHOUTING_MIN_LETTERS and (
            sum(c.isupper() for c in letters) / len(letters) >= SHOUTING_RATIO
        ):
            score, terms = score + 1, [*terms, "(shouting)"]
        if text.count("!") >= 3:
            score, terms = score + 1, [*terms, "(!!!)"]
        return NegativeWording(score, terms)
