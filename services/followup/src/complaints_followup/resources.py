"""What followup loads at start: texts, the notifier, and the survey signing secret."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from complaints_followup.messages import load_texts
from complaints_followup.notify import ChannelRouter, Notifier, SmtpNotifier, WebhookNotifier
from complaints_shared.policy import Policy
from complaints_shared.settings import ServiceSettings


@dataclass
class FollowupResources:
    texts: dict[str, dict[str, Any]]
    notifier: Notifier
    configured_secret: str | None
    # set once a unit of work that queued deliveries has committed: the worker goes on at once
    queued: asyncio.Event = field(default_factory=asyncio.Event)
    _secret: bytes | None = field(default=None, repr=False)

    async def secret(self, pool: asyncpg.Pool) -> bytes:
        """The survey signing key: from settings, else created once and kept in the database."""
        if self._secret is None:
            if self.configured_secret:
                self._secret = self.configured_secret.encode()
            else:
                await pool.execute(
                    "INSERT INTO service_secrets (name, value) VALUES ('survey', $1)"
                    " ON CONFLICT (name) DO NOTHING",
                    secrets.token_urlsafe(32),
                )
                value = await pool.fetchval(
                    "SELECT value FROM service_secrets WHERE name = 'survey'"
                )
                self._secret = str(value).encode()
        return self._secret


def prepare(settings: ServiceSettings, policy: Policy) -> FollowupResources:
    return FollowupResources(
        texts=load_texts(policy.intake.languages, settings.templates_dir),
        notifier=ChannelRouter(SmtpNotifier(settings), WebhookNotifier(settings.webhook_url)),
        configured_secret=settings.survey_secret,
    )
