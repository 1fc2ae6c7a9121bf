"""The local infrastructure's own pure parts."""

from __future__ import annotations

import base64
import uuid

import infra as local_infra  # on the path through tests/conftest.py


def test_a_kafka_cluster_id_never_starts_with_a_dash():
    """The storage tool reads an id starting with ``-`` as an option and refuses to format:
    such a draw is made again."""
    leading_dash = uuid.UUID(bytes=b"\xf8" + bytes(15))  # base64 "-A…"
    assert base64.urlsafe_b64encode(leading_dash.bytes).decode().startswith("-")
    draws = iter([leading_dash, leading_dash, uuid.UUID(int=7)])
    cluster_id = local_infra.kafka_cluster_id(lambda: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(uuid.UUID(int=7).bytes).decode()[:22]
    assert all(not local_infra.kafka_cluster_id().startswith("-") for _ in range(2000))
