"""Test infrastructure: a real Kafka broker and a real PostgreSQL server, started once per run.

Order of preference: servers named by ``COMPLAINTS_KAFKA_BOOTSTRAP`` /
``COMPLAINTS_DATABASE_URL``; else testcontainers where a Docker engine answers; else the
project's local processes (``deploy/local/infra.py``), stopped again at the end if this run
started them.  Infrastructure that cannot start fails the tests that need it; nothing skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy" / "local"))

import infra as local_infra  # noqa: E402
from complaints_shared.topics import delete_topics  # noqa: E402


@dataclass(frozen=True)
class Infrastructure:
    kafka_bootstrap: str
    postgres_url: str  # a server URL; tests create their own databases on it
    oidc_issuer: str  # the local Keycloak with the platform's realm
    keycloak: local_infra.Keycloak

    def dsn(self, database: str) -> str:
        return f"{self.postgres_url.rstrip('/')}/{database}"


def _server_url(database_url: str) -> str:
    """``postgresql://u@h:p/db?x`` → ``postgresql://u@h:p``."""
    scheme, rest = database_url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    kafka = os.environ.get("COMPLAINTS_KAFKA_BOOTSTRAP")
    database = os.environ.get("COMPLAINTS_DATABASE_URL")
    cleanups = []
    local = local_infra.LocalInfra.from_env()
    identity = None
    try:
        if (not kafka or not database) and _docker_available():
            if not kafka:
                from testcontainers.kafka import KafkaContainer

                kc = KafkaContainer("apache/kafka:4.1.1").start()
                cleanups.append(kc.stop)
                kafka = kc.get_bootstrap_server()
            if not database:
                from testcontainers.postgres import PostgresContainer

                pc = PostgresContainer("postgres:15", driver=None).start()
                cleanups.append(pc.stop)
                database = pc.get_connection_url()
        # the identity provider (always the local realm) starts while the others do
        identity = ThreadPoolExecutor(1).submit(local.keycloak.start)
        if not kafka or not database:
            if not database:
                if local.postgres.start():
                    cleanups.append(local.postgres.stop)
                database = local.postgres.url
                # the local server wants its password (SCRAM) over TCP
                os.environ.setdefault("PGPASSFILE", str(local.postgres.passfile))
            if not kafka:
                if local.kafka.start():
                    cleanups.append(local.kafka.stop)
                kafka = local.kafka.bootstrap
        if identity.result():
            cleanups.append(local.keycloak.stop)
    except Exception as exc:
        if identity is not None and identity.exception() is None and identity.result():
            cleanups.append(local.keycloak.stop)
        for cleanup in reversed(cleanups):
            cleanup()
        pytest.fail(f"test infrastructure could not start: {exc}", pytrace=False)
    assert kafka and database
    try:
        yield Infrastructure(kafka, _server_url(database), local.keycloak.issuer, local.keycloak)
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


async def _create_database(infrastructure: Infrastructure) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(infrastructure.dsn("postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop_database(infrastructure: Infrastructure, name: str) -> None:
    admin = await asyncpg.connect(infrastructure.dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """A fresh, empty database for one test; dropped afterwards."""
    name = await _create_database(infrastructure)
    yield infrastructure.dsn(name)
    await _drop_database(infrastructure, name)


@pytest.fixture
async def new_database(
    infrastructure: Infrastructure,
) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """A factory of fresh databases (DSNs), all dropped after the test."""
    names: list[str] = []

    async def make() -> str:
        names.append(await _create_database(infrastructure))
        return infrastructure.dsn(names[-1])

    yield make
    for name in names:
        await _drop_database(infrastructure, name)


@pytest.fixture
async def topic_prefix(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """Topics (and consumer groups) of their own for one test; its topics are deleted after
    it, so a long-lived local broker does not collect thousands of partitions."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    await delete_topics(infrastructure.kafka_bootstrap, prefix)
