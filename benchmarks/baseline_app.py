"""The HTTP baseline of the intake benchmark: the least a service can do for a submission.

A FastAPI app under uvicorn (the same server, event loop and HTTP parser as the services) that
validates a body comparable to a complaint with pydantic and commits one INSERT per request
through an asyncpg pool, then answers 201 with the stored id.  Nothing else: no token, no
rules, no events, no outbox.  ``python benchmarks/baseline_app.py --port P --dsn DSN``;
with ``--workers N``, N processes share the port (as ``COMPLAINTS_WORKERS`` runs a service).
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
import uvicorn
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field


class Customer(BaseModel):
    name: str | None = Field(None, max_length=200)
    email: str | None = Field(None, max_length=254)
    phone: str | None = Field(None, max_length=40)


class Submission(BaseModel):
    channel: str = Field(max_length=20)
    customer: Customer
    subject: str = Field(max_length=200)
    description: str = Field(max_length=5000)


def create_app(dsn: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def init(conn: asyncpg.Connection) -> None:
            await conn.set_type_codec(
                "jsonb",
                encoder=lambda v: orjson.dumps(v).decode(),
                decoder=orjson.loads,
                schema="pg_catalog",
            )

        pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10, init=init)
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS submissions (id uuid PRIMARY KEY, body jsonb NOT NULL,"
            " received_at timestamptz NOT NULL DEFAULT now())"
        )
        app.state.pool = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/complaints", status_code=201)
    async def submit(body: Submission, request: Request) -> dict[str, Any]:
        new = uuid.uuid4()
        await request.app.state.pool.execute(
            "INSERT INTO submissions (id, body) VALUES ($1, $2)", new, body.model_dump()
        )
        return {"complaint_id": new}

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


_DSN_VARIABLE = "BENCH_BASELINE_DSN"


def app_from_environment() -> FastAPI:
    """The app of one worker process (``--workers`` > 1)."""
    return create_app(os.environ[_DSN_VARIABLE])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": args.port,
        "log_level": "warning",
        "access_log": False,
    }
    if args.workers > 1:
        os.environ[_DSN_VARIABLE] = args.dsn
        uvicorn.run(
            "baseline_app:app_from_environment",
            factory=True,
            workers=args.workers,
            app_dir=os.path.dirname(os.path.abspath(__file__)),
            **options,
        )
    else:
        uvicorn.run(create_app(args.dsn), **options)


if __name__ == "__main__":
    main()
