"""Collector settings (env prefix COLLECTOR_)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from shuidian_shared.settings import ServiceSettings


class CollectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="COLLECTOR_", extra="ignore", frozen=True)

    http_port: int = 8001
    shard_index: int = Field(default=0, ge=0)
    shard_count: int = Field(default=1, ge=1)
    gateways: tuple[str, ...] = Field(
        default=(),
        description='a configured list of the gateways this instance polls (JSON, e.g. ["gw-a","gw-b"]); '
        "empty: the instance's shard by hash or pin",
    )
    registry_refresh_seconds: float = 10.0
    confirm_attempts: int = Field(default=5, ge=0)
    confirm_interval_seconds: float = Field(default=0.3, gt=0)
    valve_confirm_attempts: int = Field(default=10, ge=0)
    valve_confirm_interval_seconds: float = Field(default=1.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0, description="cap of a dead meter's poll back-off")
    gateway_backoff_initial_seconds: float = Field(default=1.0, gt=0)
    gateway_backoff_max_seconds: float = Field(default=60.0, gt=0)
    poll_stats_window_seconds: float = Field(
        default=60.0, gt=0, le=3600, description="window of the PollStats each gateway publishes (skipped when empty)"
    )
    data_dir: Path | None = Field(
        default=None,
        description="where the local store lives; default $SHUIDIAN_DATA_DIR/collector (./data/collector), "
        "or a fresh temporary directory in the test environment",
    )
    store_max_rows: int = Field(
        default=100_000, ge=1, description="reading batches and poll statistics the local store holds at most"
    )
    replay_window_seconds: float = Field(
        default=900.0,
        ge=0,
        description="how long a reading batch the broker acknowledged is kept to be published again on a "
        "consumer's ReplayRequest (docs/delivery.md)",
    )
    dlt645_password_level: int = Field(default=2, ge=0, le=99, description="DL/T 645 password level for writes")
    dlt645_password: SecretStr | None = Field(
        default=None,
        description="DL/T 645 6-digit password for writes (14) and relay control; unset: parameter writes and "
        "time sync beyond a broadcast need the password in the command parameters",
    )
    dlt645_operator: int = Field(default=0, ge=0, le=99_999_999, description="DL/T 645 operator code (8 digits)")
    time_sync_tolerance_seconds: float = Field(default=5.0, gt=0, description="read-back clock error accepted")
    time_sync_broadcast_limit_seconds: float = Field(
        default=300.0, ge=0, description="largest clock offset corrected by broadcast time (meters refuse more)"
    )

    clock_check_interval_seconds: float = Field(
        default=3600.0, gt=0, description="how often a poll also reads a meter's clock for its offset (clock_offset_s)"
    )
    clock_drift_tolerance_seconds: float = Field(
        default=60.0, gt=0, description="a meter clock off by more than this flags its reading clock_drift"
    )
    leakage_threshold_ma: float = Field(
        default=30.0, gt=0, description="residual current (mA) from which a reading is flagged leakage"
    )
    online_edges_retention_days: int = Field(
        default=400,
        ge=1,
        description="online/offline edges older than this are pruned (each meter's last one before is kept); "
        "availability windows must start within it. 400: a year of monthly reports plus a margin",
    )

    @model_validator(mode="after")
    def _password_digits(self) -> CollectorSettings:
        password = self.dlt645_password
        if password is not None and not (
            len(password.get_secret_value()) == 6 and password.get_secret_value().isdigit()
        ):
            raise ValueError("dlt645_password must be 6 decimal digits")
        return self

    @model_validator(mode="after")
    def _shard_in_range(self) -> CollectorSettings:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard_index {self.shard_index} must be below shard_count {self.shard_count}")
        return self

    def store_path(self) -> Path | None:
        """Where the local store lives; None in the test environment without a data dir (a temporary one)."""
        if self.data_dir is not None:
            base = self.data_dir
        elif self.environment == "test":
            return None
        else:
            base = Path(os.environ.get("SHUIDIAN_DATA_DIR", "data")) / "collector"
        # The file must outlive the process: a default instance id (host-pid) changes on every start, so the
        # store is then named after the shard, which does not.
        name = self.instance_id if "instance_id" in self.model_fields_set else f"shard-{self.shard_index}"
        return base / f"store-{name}.sqlite3"
