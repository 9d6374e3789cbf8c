"""The message contracts added for communication-quality and occupancy alarms reject what cannot be true."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from shuidian_shared import topics
from shuidian_shared.messages import MeterRef, PollCounts, PollStats, RoomOccupancy, Utility

T0 = datetime(2026, 12, 6, 12, tzinfo=UTC)


def test_poll_counts_refuse_more_failures_than_attempts() -> None:
    with pytest.raises(ValidationError, match="failures cannot exceed attempts"):
        PollCounts(meter_id="m1", attempts=2, failures=3)
    with pytest.raises(ValidationError):
        PollCounts(meter_id="m1", attempts=-1, failures=0)


def test_poll_stats_round_trip_through_json() -> None:
    stats = PollStats(
        source="collector/a",
        gateway_id="gw-1",
        window_start=T0,
        window_end=T0 + timedelta(minutes=1),
        meters=(PollCounts(meter_id="m1", attempts=10, failures=3, errors={"timeout": 2, "checksum": 1}),),
    )
    again = PollStats.model_validate_json(stats.model_dump_json())
    assert again == stats
    assert again.meters[0].errors["timeout"] == 2


def test_room_occupancy_needs_aware_times_and_valid_ids() -> None:
    occupancy = RoomOccupancy(
        source="billing",
        room_id="R-101",
        estate_id="E1",
        leased=True,
        since=T0,
        meters=(MeterRef(meter_id="m1", utility=Utility.ELECTRICITY),),
    )
    assert RoomOccupancy.model_validate_json(occupancy.model_dump_json()) == occupancy
    with pytest.raises(ValidationError):
        RoomOccupancy(source="billing", room_id="R/1", estate_id="E1", leased=False, since=T0, meters=())
    with pytest.raises(ValidationError):
        RoomOccupancy(
            source="billing", room_id="R1", estate_id="E1", leased=False, since=T0.replace(tzinfo=None), meters=()
        )


def test_new_topics_refuse_smuggled_levels() -> None:
    assert topics.poll_stats("gw-1") == "shuidian/v1/gateways/gw-1/poll-stats"
    assert topics.room_occupancy("R-101") == "shuidian/v1/rooms/R-101/occupancy"
    for bad in ("a/b", "+", "#", ""):
        with pytest.raises(ValueError, match="invalid topic segment"):
            topics.room_occupancy(bad)
