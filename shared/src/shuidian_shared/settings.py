"""Settings bases: every service reads its configuration from the environment, validated on start.

`DATABASE_URL`, `MQTT_URL` and `SERVICE_TOKEN_SECRET` are shared by all services (one database
server, one broker, one key signing the tokens services call each other with; each service owns its
own schema); everything else carries the service's prefix, e.g. `BILLING_HTTP_PORT`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", "dev-secret", "password", "test"})
# Known to everyone who reads this file: fine for dev and test stacks, refused in prod.
DEV_SERVICE_TOKEN_SECRET = "dev-only-service-token-secret-do-not-use-in-production"
MIN_SERVICE_TOKEN_SECRET_BYTES = 32


class ServiceSettings(BaseSettings):
    """Settings every service has."""

    # hide_input_in_errors: a refused setting's error must not print the environment (secrets) to the log.
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True, hide_input_in_errors=True)

    environment: Literal["dev", "test", "prod"] = "dev"
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    database_url: SecretStr = Field(
        default=SecretStr("postgresql+asyncpg://postgres@127.0.0.1:5432/shuidian"),
        validation_alias="DATABASE_URL",
    )
    database_pool_size: int = 10
    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", validation_alias="MQTT_URL")
    # TLS to the broker: an mqtts:// URL turns it on (the system's CAs verify the broker unless a CA
    # file is given); a client certificate and key authenticate the service where the broker asks for one.
    mqtt_tls_ca_file: Path | None = Field(default=None, validation_alias="MQTT_TLS_CA_FILE")
    mqtt_tls_cert_file: Path | None = Field(default=None, validation_alias="MQTT_TLS_CERT_FILE")
    mqtt_tls_key_file: Path | None = Field(default=None, validation_alias="MQTT_TLS_KEY_FILE")
    # The HS256 key of service tokens (shuidian_kit.service_auth): the gateway signs every call to a
    # backend with it and every backend refuses a request without one. The same on every service.
    service_token_secret: SecretStr = Field(
        default=SecretStr(DEV_SERVICE_TOKEN_SECRET), validation_alias="SERVICE_TOKEN_SECRET"
    )
    # Persistent sessions keep QoS 1 messages for a replica while it restarts, but only make sense
    # with a stable instance_id: a session left behind stays a member of its shared-subscription
    # group and the broker keeps handing it messages. Ephemeral instances (tests) use clean sessions.
    mqtt_clean_session: bool = False
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    timezone: str = "Asia/Shanghai"
    # Garbage collector tuning at start (GC_TUNING), process-wide: everything alive once the
    # service has started (modules, app, pools) is frozen out of the collector's reach, and the
    # young generation is collected every `gc_young_threshold` allocations instead of 700. Full
    # collections then scan only what the work allocates, not the whole framework each time
    # (billing's benchmark process spent 3.4 s of CPU collecting, 0.6 s with this). None = on,
    # except in tests, whose many short-lived apps would stay pinned.
    gc_tuning: bool | None = None
    gc_young_threshold: int = Field(default=10_000, ge=700)

    @property
    def tunes_gc(self) -> bool:
        return self.gc_tuning if self.gc_tuning is not None else self.environment != "test"

    def secret_fields(self) -> dict[str, SecretStr]:
        """Secrets that must not keep a placeholder value outside dev (subclasses list theirs; the
        service-token secret is always checked, whether or not a subclass calls this)."""
        secret = self.service_token_secret.get_secret_value()
        # The dev default is long enough for the length rule, so prod names it explicitly; an HS256 key
        # shorter than the hash is refused everywhere but dev.
        weak = (secret == DEV_SERVICE_TOKEN_SECRET and self.environment == "prod") or len(
            secret.encode()
        ) < MIN_SERVICE_TOKEN_SECRET_BYTES
        return {"service_token_secret": SecretStr("") if weak else self.service_token_secret}

    @model_validator(mode="after")
    def _reject_placeholder_secrets(self) -> Self:
        if self.environment != "dev":
            secrets = {**ServiceSettings.secret_fields(self), **self.secret_fields()}
            weak = [
                name
                for name, value in secrets.items()
                if value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS or len(value.get_secret_value()) < 16
            ]
            if weak:
                names = ", ".join(f"{self.env_name(name)} ({name})" for name in sorted(weak))
                raise ValueError(
                    f"生产/测试环境拒绝占位或过短的密钥，请设置随机值后重启 · placeholder or weak secret(s) outside "
                    f"dev, the service will not start until each is a random value (openssl rand -base64 48): {names}"
                )
        if (self.mqtt_tls_cert_file is None) != (self.mqtt_tls_key_file is None):
            raise ValueError("MQTT_TLS_CERT_FILE and MQTT_TLS_KEY_FILE go together")
        return self

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable a field is read from (its alias, or the service's prefix + its name)."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()
