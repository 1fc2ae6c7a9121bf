"""The ``eventsourcing`` library's PostgreSQL application recorder, appending the same events as
the event store (a benchmark-only dependency: ``uv sync --group bench``, which ``./dev bench``
does).

Its recorder is synchronous (psycopg 3 with a connection pool), so its 8 writers are 8 threads,
each inserting one event per call: the event and its notification id (the recorder's ordered,
gap-free feed of all events, which is what the outbox's position gives the event store).
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore


def append_rate(dsn: str, password: str, payloads: list[bytes], writers: int) -> float:
    """Events/s of ``len(payloads)`` single-event appends, each to a new stream, by
    ``writers`` threads on ``writers`` pooled connections."""
    url = urlsplit(dsn)
    datastore = PostgresDatastore(
        dbname=url.path.lstrip("/"),
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=password,
        pool_size=writers,
    )
    try:
        recorder = PostgresApplicationRecorder(datastore, events_table_name="reference_events")
        recorder.create_table()
        events = [
            StoredEvent(
                originator_id=uuid.uuid4(),
                originator_version=1,
                topic="complaints_intake:ComplaintWithdrawn",
                state=p,
            )
            for p in payloads
        ]
        with ThreadPoolExecutor(writers) as threads:
            t0 = time.perf_counter()
            list(threads.map(lambda e: recorder.insert_events([e]), events))
            return len(events) / (time.perf_counter() - t0)
    finally:
        datastore.close()
