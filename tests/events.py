"""Event models of the tests' own (service ``test``): never part of the published contract."""

from __future__ import annotations

from complaints_shared.events import REGISTRY, DomainEvent

event = REGISTRY.register("test")


@event
class Happened(DomainEvent):
    n: int
    text: str = ""


@event
class Pinged(DomainEvent):
    pass


@event
class Counted(DomainEvent):
    n: int


@event
class SomethingElse(DomainEvent):
    n: int
