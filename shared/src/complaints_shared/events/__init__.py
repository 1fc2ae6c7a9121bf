"""Every event of the platform as a pydantic model, one module per service.

``REGISTRY`` knows them all by name; the JSON Schemas and the AsyncAPI document are generated
from these models (``./dev contracts``).
"""

from complaints_shared.events import followup, intake, learning, resolution
from complaints_shared.events.base import (
    REGISTRY,
    DomainEvent,
    Payload,
    Personal,
    UnknownEvent,
    personal,
    personal_paths,
)

__all__ = [
    "REGISTRY",
    "DomainEvent",
    "Payload",
    "Personal",
    "UnknownEvent",
    "followup",
    "intake",
    "learning",
    "personal",
    "personal_paths",
    "resolution",
]
