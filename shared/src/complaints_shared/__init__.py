"""Shared library of the complaint services.

Event envelope and its CloudEvents/Kafka mapping, an asyncpg event store with a transactional
outbox, an idempotent (inbox) consumer runner, telemetry set-up and a FastAPI service base.
"""
