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


def test_a_group_is_asked_for_on_every_partition_of_the_offsets_topic():
    """The broker places a group by its name's Java ``String.hashCode`` (values as Java gives
    them); the groups asked for at start cover every partition once."""
    assert local_infra._java_string_hash("hello") == 99162322
    assert local_infra._java_string_hash("Hello World") == -862545276
    groups = local_infra._group_on_each_offsets_partition()
    partitions = {
        abs(local_infra._java_string_hash(g)) % local_infra.OFFSETS_PARTITIONS for g in groups
    }
    assert len(groups) == len(partitions) == local_infra.OFFSETS_PARTITIONS
