"""What one learning instance keeps in memory: its similar-complaints index and the latest
states of recently used problems."""

from __future__ import annotations

from dataclasses import dataclass, field

from complaints_learning.domain import Problem, resume
from complaints_learning.search import SimilarSearch
from complaints_shared.repository import StateCache


def _problem_states() -> StateCache[Problem | None]:
    return StateCache(resume)


@dataclass(frozen=True)
class LearningResources:
    search: SimilarSearch = field(default_factory=SimilarSearch)
    # A problem's stream grows by one event per occurrence: a decision reads only what was
    # appended since its cached state (which holds complaint ids, no personal data).
    problem_states: StateCache[Problem | None] = field(default_factory=_problem_states)
