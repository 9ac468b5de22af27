"""Configuration from the environment, every variable prefixed ``STOCKTRACE_``, validated at start."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ingest.routes import Route, parse_routes
from ingest.wire import BrokerOptions


class SettingsError(Exception):
    """The configuration is wrong; the message names each variable and what to do."""


class Settings(BaseSettings):
    """Every setting; the README's configuration table is generated from these descriptions."""

    model_config = SettingsConfigDict(env_prefix="STOCKTRACE_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "postgresql:///stocktrace",
        description="libpq connection URL of the TimescaleDB database, e.g. postgresql://user:pw@host:5432/stocktrace",
    )
    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker to consume from: mqtt://host:port, or mqtts://host:port for TLS",
    )
    mqtt_username: str | None = Field(None, description="Broker user name, if the broker asks for one")
    mqtt_password: SecretStr | None = Field(None, description="Broker password")
    mqtt_ca_file: str | None = Field(None, description="CA certificate that signed the broker's TLS certificate")
    mqtt_client_id: str = Field(
        "stocktrace",
        description="MQTT client id; each worker appends -<n>. Keep it stable: the session is kept by it",
    )
    mqtt_share_group: str = Field(
        "stocktrace",
        description="Shared-subscription group ($share/<group>/...) that workers split the load in",
    )
    mqtt_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["stocktrace/#"],
        description="Comma-separated topic filters to consume (routed ones are added automatically)",
    )
    mqtt_topic_prefix: str = Field(
        "",
        description="Topic level(s) every device topic sits under, e.g. 'site/berlin': subscribed under it and"
        " removed before routing and decoding",
    )
    mqtt_receive_maximum: int = Field(
        65535,
        ge=1,
        le=65535,
        description="Unacknowledged QoS 1 messages the broker may have in flight to a worker",
    )
    mqtt_session_expiry_s: int = Field(
        86400, ge=0, description="How long the broker keeps a disconnected worker's session"
    )
    routes: Annotated[list[Route], NoDecode] = Field(
        default_factory=list,
        description="Topic filter → decoder, ';'-separated, e.g. 'zebra/+/data=zebra-fx;ttn/#=ttn-v3'",
    )
    batch_max_messages: int = Field(5000, ge=1, description="Commit a batch when it holds this many messages")
    batch_max_wait_ms: int = Field(20, ge=1, description="... or when its first message has waited this long")
    max_payload_bytes: int = Field(
        262144, ge=64, description="Larger payloads are refused into the dead letters without being decoded"
    )
    retention_days: int = Field(30, ge=1, description="Raw reads and telemetry older than this are dropped")
    compress_after_days: int = Field(2, ge=1, description="Compress raw chunks older than this (Timescale edition)")
    rules_file: Path | None = Field(
        None, description="Alert rules (YAML); unset: the shipped defaults, alerts/rules.default.yaml"
    )
    alert_clock: Literal["wall", "device"] = Field(
        "wall",
        description="What now is to the alert rules: wall (the host's clock), or device (the newest device time"
        " ingested: for replaying a backlog or an accelerated simulation)",
    )
    alert_routes_file: Path | None = Field(
        None, description="Alert routes and receivers (YAML, see alerts/routes.example.yaml); unset: nothing is sent"
    )
    api_auth: bool = Field(
        True, description="Require an API key on every request (`stocktrace keys create`); false only for a local demo"
    )
    api_max_body_bytes: int = Field(
        10_485_760, ge=1024, description="Larger request bodies are refused with 413 before they are read"
    )
    metrics_auth: bool = Field(False, description="Require an API key on /metrics too (Prometheus can send one)")
    api_host: str = Field("127.0.0.1", description="Address the HTTP API listens on")
    api_port: int = Field(8080, ge=1, le=65535, description="Port the HTTP API listens on")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("mqtt_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("routes", mode="before")
    @classmethod
    def _parse_routes(cls, value: object) -> object:
        return parse_routes(value) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("must start with postgresql://, e.g. postgresql://localhost:5432/stocktrace")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("rules_file", "alert_routes_file")
    @classmethod
    def _check_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _check_credentials(self) -> Self:
        if self.mqtt_password is not None and self.mqtt_username is None:
            raise ValueError("STOCKTRACE_MQTT_PASSWORD is set but STOCKTRACE_MQTT_USERNAME is not; set both")
        return self

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        parts = urlsplit(self.mqtt_url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url).scheme == "mqtts"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and ``overrides``), or a `SettingsError` that says what to fix."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic-settings accepts any field by name
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            name = f"STOCKTRACE_{field.upper()}" if error["loc"] else "settings"
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"  {name}: {message} (got {str(error.get('input'))[:80]!r})")
        raise SettingsError("invalid configuration:\n" + "\n".join(lines)) from None


def broker_options(settings: Settings, client_id: str, *, clean_start: bool = False) -> BrokerOptions:
    """How a worker (or a probe, with ``clean_start``) connects to the broker."""
    tls = None
    if settings.mqtt_tls:
        tls = ssl.create_default_context(cafile=settings.mqtt_ca_file)
    return BrokerOptions(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        client_id=client_id,
        username=settings.mqtt_username,
        password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
        tls=tls,
        session_expiry_s=0 if clean_start else settings.mqtt_session_expiry_s,
        receive_maximum=settings.mqtt_receive_maximum,
        clean_start=clean_start,
    )
