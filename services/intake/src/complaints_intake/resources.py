"""What intake loads at start: acknowledgement templates and suggestion/alert rules."""

from __future__ import annotations

from dataclasses import dataclass

from complaints_intake.language import warm_up
from complaints_intake.messages import Template, load_templates
from complaints_intake.rules import IntakeRules
from complaints_shared.policy import Policy
from complaints_shared.settings import ServiceSettings


@dataclass(frozen=True)
class IntakeResources:
    templates: dict[str, Template]
    rules: IntakeRules


def prepare(settings: ServiceSettings, policy: Policy) -> IntakeResources:
    """Load and check templates and rules now, so a broken file stops the start."""
    languages = policy.intake.languages
    warm_up(languages)
    return IntakeResources(
        templates=load_templates(languages, settings.templates_dir),
        rules=IntakeRules.load(policy.intake, settings.templates_dir),
    )
