"""The ``eventsourcing`` library's PostgreSQL application recorder, appending the same events as
the event store (a benchmark-only dependency: ``uv sync --group bench``, which ``./dev bench``
does).

Its recorder is synchronous (psycopg 3 with a connection pool), so its 8 writers are 8 threads,
each inserting one event per call: the event and its notification id (the recorder's ordered,
gap-free feed of all events, which is what the outbox's position gives the event store).  The
bench appends with it in rounds, alternating with the event store's own rounds, so that a busy
moment of the machine weighs on both sides of their ratio.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore


class Reference:
    """The recorder on ``writers`` pooled connections, its table made; :meth:`append` a round
    at a time, then :meth:`close`."""

    def __init__(self, dsn: str, password: str, writers: int) -> None:
        url = urlsplit(dsn)
        self._datastore = PostgresDatastore(
            dbname=url.path.lstrip("/"),
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=password,
            pool_size=writers,
        )
        self._threads = ThreadPoolExecutor(writers)
        try:
            self._recorder = PostgresApplicationRecorder(
                self._datastore, events_table_name="reference_events"
            )
            self._recorder.create_table()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def events(payloads: list[bytes]) -> list[StoredEvent]:
        """One event per payload, each the first of a new stream (made before it is timed)."""
        return [
            StoredEvent(
                originator_id=uuid.uuid4(),
                originator_version=1,
                topic="complaints_intake:ComplaintWithdrawn",
                state=p,
            )
            for p in payloads
        ]

    def append(self, events: list[StoredEvent]) -> None:
        """``events`` as single-event appends by the writers (returns when all are in)."""
        list(self._threads.map(lambda e: self._recorder.insert_events([e]), events))

    def close(self) -> None:
        self._threads.shutdown()
        self._datastore.close()
