"""Errors that cross layers: domain and storage raise them, the HTTP layer maps them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from uuid import UUID


class ConcurrencyConflict(Exception):
    """Another writer appended to the stream first; the caller must reload and decide again."""

    def __init__(self, stream_id: UUID, expected_version: int, actual_version: int | None = None):
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            f"stream {stream_id} is not at version {expected_version}"
            + (f" (it is at {actual_version})" if actual_version is not None else "")
        )


class NotFound(Exception):
    """The addressed resource does not exist."""

    def __init__(self, what: str, ident: object):
        self.what = what
        self.ident = ident
        super().__init__(f"{what} {ident} not found")


COMMAND_NAME = re.compile(r"^[a-z]+(?:_[a-z]+)*$")
"""Command names, one style everywhere (``add_details``, ``plan_action``): the names in
``allowed_commands`` and in a 409's ``command``."""


class CommandRejected(Exception):
    """A command that the aggregate's current state does not allow; ``reason`` says why when
    the state alone does not (an action already done, work still open)."""

    def __init__(self, state: str, command: str, allowed: Sequence[str], reason: str | None = None):
        for name in (command, *allowed):
            if not COMMAND_NAME.match(name):
                raise ValueError(f"{name!r} is not a command name (snake_case)")
        self.state = state
        self.command = command
        self.allowed = list(allowed)
        self.reason = reason
        super().__init__(
            (reason or f"'{command}' is not allowed in state '{state}'")
            + "; allowed: "
            + (", ".join(self.allowed) or "none")
        )


class PoisonEvent(Exception):
    """An event a handler can never process: it goes to the dead-letter topic."""


class InputRejected(Exception):
    """A well-formed request whose content the domain refuses (answered 422, nothing changes)."""

    def __init__(self, field: str, message: str, **details: object):
        self.field = field
        self.message = message
        self.details = details
        super().__init__(f"{field}: {message}")


class Forbidden(Exception):
    """The actor may not do this (authority, four-eyes rule): answered 403."""


class Gone(Exception):
    """The resource existed but is no longer usable (expired, cancelled): answered 410."""


class Unauthenticated(Exception):
    """No usable bearer token: answered 401 with ``WWW-Authenticate: Bearer``."""

    def __init__(self, reason: str, error: str = "invalid_token") -> None:
        self.reason = reason
        self.error = error
        super().__init__(reason)

    @property
    def challenge(self) -> str:
        return f'Bearer realm="complaints", error="{self.error}", error_description="{self.reason}"'


class TooManyRequests(Exception):
    """Too many requests from one client: answered 429 with ``Retry-After``."""

    def __init__(self, reason: str, retry_after: int = 60) -> None:
        self.retry_after = retry_after
        super().__init__(reason)
