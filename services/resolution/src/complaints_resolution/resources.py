"""What resolution loads at start: the customer message templates."""

from __future__ import annotations

from dataclasses import dataclass

from complaints_resolution.messages import Messages
from complaints_shared.policy import Policy
from complaints_shared.settings import ServiceSettings


@dataclass(frozen=True)
class ResolutionResources:
    messages: Messages


def prepare(settings: ServiceSettings, policy: Policy) -> ResolutionResources:
    return ResolutionResources(
        Messages.load(
            policy.intake.languages, policy.intake.default_language, settings.templates_dir
        )
    )
