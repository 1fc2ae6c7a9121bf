"""Service settings: environment variables prefixed ``COMPLAINTS_``, validated at start."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:55432"
# a consumer's wait for a fuller fetch, by default (the consumer's module docstring); the
# consumer's runner takes it too where no settings are given
CONSUMER_FETCH_WAIT_MS = 100


class ServiceSettings(BaseSettings):
    """What one service process needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="COMPLAINTS_", extra="ignore")

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", min_length=1, description="Kafka bootstrap servers, comma-separated"
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL DSN of this service's own database; default: the local"
        " server's complaints_<service> database",
    )
    database_password_file: Path | None = Field(
        None,
        description="file holding the database password (e.g. a Docker or Kubernetes secret);"
        " else the DSN, PGPASSWORD or PGPASSFILE",
    )
    keyring_url: str | None = Field(
        None,
        description="PostgreSQL DSN of the keyring (customers' data keys, owned by the privacy"
        " officer); default: the local server's complaints_keyring database",
    )
    keyring_master_key_file: Path | None = Field(
        None,
        description="file holding the master key that wraps the data keys (base64 of 32 random"
        " bytes); required unless COMPLAINTS_KEYRING_MASTER_KEY is set",
    )
    keyring_master_key: SecretStr | None = Field(
        None, description="the master key itself (prefer the file)"
    )
    peers: dict[str, str] = Field(
        default_factory=dict,
        description="the other services' base URLs by name (JSON), for subject access requests"
        " answered for the whole platform",
    )
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535, description="HTTP port; default per service")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="processes serving the port; each is a whole replica (its relay competes"
        " for the leader lock, its consumers share the partitions)",
    )
    policy: Path | None = Field(None, description="TOML policy file; default: built-in policy")
    topic_prefix: str = Field(
        "", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix for every topic (shared clusters)"
    )
    topic_partitions: int = Field(3, ge=1, le=1000)
    topic_replication_factor: int = Field(1, ge=1, le=10)
    outbox_takeover_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="events waiting this long while the relay leader is silent as long: another"
        " instance ends the leader's session and takes over; readiness reports the stall",
    )
    consumer_fetch_wait_ms: int = Field(
        CONSUMER_FETCH_WAIT_MS,
        ge=0,
        le=500,
        description="how long a consumer's fetch may wait for more records (64 KiB) before the"
        " broker answers it: fewer, larger batches under load, at most this much latency per hop"
        " when traffic is light; 0: answered at the first record",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        "json", description="json: one object a line with trace_id and span_id; text: for people"
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="larger bodies get 413")
    smtp_host: str | None = Field(None, description="SMTP server for e-mail to customers")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_from: str = "Customer Care <care@complaints.local>"
    mail_spool: Path | None = Field(
        None,
        description="a local Maildir that keeps copies of sent e-mail (a development mail"
        " catcher): scrubbed of a customer's messages when they are erased",
    )
    webhook_url: str | None = Field(
        None, description="gateway for SMS, phone, chat, social, web and letter messages"
    )
    message_spool: Path | None = Field(
        None,
        description="a local folder where a development gateway keeps each message it is"
        " handed as <delivery id>.json: scrubbed of a customer's messages when they are erased",
    )
    public_url: str = Field("http://127.0.0.1:8003", description="base of survey links")
    survey_secret: str | None = Field(
        None, min_length=16, description="signs survey tokens; default: kept in the database"
    )
    templates_dir: Path | None = Field(
        None, description="folder whose message templates and rule files replace the built-in"
    )
    oidc_issuer: str | None = Field(
        None,
        pattern=r"^https?://",
        description="OpenID Connect issuer whose access tokens the APIs accept (required)",
    )
    oidc_audience: str = Field("complaints-api", min_length=1, description="required `aud`")
    oidc_roles_claim: str = Field(
        "realm_access.roles",
        min_length=1,
        description="dotted path of the roles in the token (Entra ID: `roles`)",
    )
    public_submission: bool = Field(
        False, description="anyone may submit a complaint without a token (rate-limited)"
    )
    public_submission_per_minute: int = Field(
        30, ge=1, description="anonymous submissions per client address and minute"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed to call the APIs (JSON list or comma-separated)",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip().startswith("["):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("database_url", "keyring_url")
    @classmethod
    def _postgres_only(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// DSN")
        return v

    @field_validator("policy")
    @classmethod
    def _policy_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"policy file {v} does not exist")
        return v

    def database_password(self) -> str | None:
        if self.database_password_file is None:
            return None
        return self.database_password_file.read_text().strip()

    def master_key(self) -> str:
        """The keyring master key's text (read at start: a missing key stops the start)."""
        if self.keyring_master_key_file is not None:
            return self.keyring_master_key_file.read_text().strip()
        if self.keyring_master_key is not None:
            return self.keyring_master_key.get_secret_value()
        raise ValueError(
            "COMPLAINTS_KEYRING_MASTER_KEY_FILE is required: the key that wraps the customers'"
            " data keys (create one with `./dev keyring-key`)"
        )

    def keyring_dsn(self) -> str:
        return self.keyring_url or f"{LOCAL_POSTGRES}/complaints_keyring"

    def dsn_for(self, service: str) -> str:
        return self.database_url or f"{LOCAL_POSTGRES}/complaints_{service}"
