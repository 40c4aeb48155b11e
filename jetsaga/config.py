"""Settings: read from the environment once, at start, into a frozen value (SPEC §1)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

DEFAULT_NATS_URL: Final = "nats://127.0.0.1:4222"
DEFAULT_DATABASE_URL: Final = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_STRIPE_API_BASE: Final = "http://127.0.0.1:8420"
DEFAULT_STRIPE_KEY: Final = "sk_test_jetsaga_localstripe"

SERVICE_DATABASES: Final = {
    "order": "order_service",
    "inventory": "inventory_service",
    "payment": "payment_service",
}


class ConfigError(ValueError):
    """An environment variable holds a value the system cannot run with."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str = DEFAULT_NATS_URL
    database_url: str = DEFAULT_DATABASE_URL
    stripe_secret_key: str = DEFAULT_STRIPE_KEY
    stripe_api_base: str = DEFAULT_STRIPE_API_BASE
    payment_gateway: str = "stripe"
    saga_timeout_s: float = 300.0
    payment_timeout_s: float = 120.0
    reservation_ttl_s: float = 900.0
    nats_replicas: int = 1
    log_level: str = "INFO"
    log_format: str = "json"
    http_host: str = "127.0.0.1"
    order_port: int = 3004
    payment_port: int = 3005
    inventory_port: int = 3006
    db_pool_size: int = 16
    fetch_batch: int = 200
    sweep_interval_s: float = 1.0

    def port_of(self, service: str) -> int:
        return {
            "order": self.order_port,
            "payment": self.payment_port,
            "inventory": self.inventory_port,
        }[service]

    def database_url_for(self, service: str) -> str:
        """The service's own database on the configured server (created if missing)."""
        return with_database(self.database_url, SERVICE_DATABASES[service])


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


_ENV: Final = {
    "NATS_URL": ("nats_url", str),
    "DATABASE_URL": ("database_url", str),
    "STRIPE_SECRET_KEY": ("stripe_secret_key", str),
    "STRIPE_API_BASE": ("stripe_api_base", str),
    "PAYMENT_GATEWAY": ("payment_gateway", str),
    "SAGA_TIMEOUT_S": ("saga_timeout_s", float),
    "PAYMENT_TIMEOUT_S": ("payment_timeout_s", float),
    "RESERVATION_TTL_S": ("reservation_ttl_s", float),
    "NATS_REPLICAS": ("nats_replicas", int),
    "LOG_LEVEL": ("log_level", str),
    "LOG_FORMAT": ("log_format", str),
    "HTTP_HOST": ("http_host", str),
    "ORDER_PORT": ("order_port", int),
    "PAYMENT_PORT": ("payment_port", int),
    "INVENTORY_PORT": ("inventory_port", int),
    "DB_POOL_SIZE": ("db_pool_size", int),
    "FETCH_BATCH": ("fetch_batch", int),
    "SWEEP_INTERVAL_S": ("sweep_interval_s", float),
}


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment; a bad value is a `ConfigError` naming it."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for var, (field, kind) in _ENV.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            values[field] = kind(raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not a valid {kind.__name__}") from None
    settings = Settings(**values)  # type: ignore[arg-type]
    if settings.payment_gateway not in ("stripe", "fake"):
        raise ConfigError(f"PAYMENT_GATEWAY must be stripe or fake: {settings.payment_gateway!r}")
    if settings.log_format not in ("json", "text"):
        raise ConfigError(f"LOG_FORMAT must be 'json' or 'text', not {settings.log_format!r}")
    for name in ("saga_timeout_s", "payment_timeout_s", "reservation_ttl_s"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name.upper()} must be positive")
    if settings.reservation_ttl_s <= settings.saga_timeout_s:
        # A reservation must outlive its saga, or a confirmed order could lose its stock.
        raise ConfigError("RESERVATION_TTL_S must be greater than SAGA_TIMEOUT_S")
    return settings
