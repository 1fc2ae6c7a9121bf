"""Event models of the tests' own (service ``test``): never part of the published contract."""

from __future__ import annotations

from complaints_shared.events import REGISTRY, DomainEvent
from complaints_shared.events.base import Payload, Personal, PersonalOrNone

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


class Item(Payload):
    label: str
    name: PersonalOrNone = None


@event
class Confided(DomainEvent):
    """An event with personal data: sealed in stores and on topics."""

    n: int
    secret: Personal
    note: PersonalOrNone = None
    items: tuple[Item, ...] = ()
