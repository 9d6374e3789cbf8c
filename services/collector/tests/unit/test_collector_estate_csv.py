"""The commissioning CSV: every bad line is found and named, nothing half-parsed gets through."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shuidian_collector.domain import estate_csv
from shuidian_collector.domain.devices import BusProtocol, meter_problems, owns, shard_of
from shuidian_collector.settings import CollectorSettings

HEADER = ",".join(estate_csv.COLUMNS)
LINE = "gw-1,bus-1,127.0.0.1,4001,dlt645,2400,1000,1,E-1,000000000001,dlt645-prepaid,electricity,60"


def test_a_good_file_round_trips() -> None:
    text = "\n".join([HEADER, LINE, LINE.replace("E-1,000000000001", "E-2,000000000002")]) + "\n"
    rows, problems = estate_csv.parse(text)
    assert problems == []
    assert [r.meter_id for r in rows] == ["E-1", "E-2"]
    assert estate_csv.render(rows) == text


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("", 1, "missing column"),
        (HEADER + "\n", 1, "no meters"),
        (HEADER.replace(",model", "") + "\n" + LINE, 1, "missing column(s): model"),
        (HEADER + ",colour\n" + LINE + ",red", 1, "unknown column(s): colour"),
        (HEADER + "\n" + LINE + ",extra", 2, "more fields than columns"),
        (HEADER + "\n" + LINE.replace(",4001,", ",70000,"), 2, "port"),
        (HEADER + "\n" + LINE.replace(",dlt645,", ",modbus-rtu,"), 2, "unit id"),
        (HEADER + "\n" + LINE.replace("electricity", "gas"), 2, "utility"),
        (HEADER + "\n" + LINE.replace("gw-1", "gw/1"), 2, "gateway_id"),
        (HEADER + "\n" + LINE + "\n" + LINE, 3, "already on line 2"),
        (HEADER + "\n" + LINE.replace("E-1", "E" * 200_000), 2, "not valid CSV"),  # beyond csv's field limit
        (
            HEADER + "\n" + LINE + "\n" + LINE.replace("E-1,", "E-9,").replace(",2400,", ",9600,"),
            3,
            "described differently",
        ),
    ],
)
def test_bad_files_are_refused_with_the_line(text: str, line: int, fragment: str) -> None:
    _rows, problems = estate_csv.parse(text)
    assert problems, "a bad file must be refused"
    assert problems[0]["line"] == line
    assert fragment in str(problems[0]["errors"])


@given(st.text(max_size=400))
def test_arbitrary_text_never_crashes_and_never_half_imports(text: str) -> None:
    rows, problems = estate_csv.parse(text)
    assert bool(rows) or bool(problems)
    if problems:
        assert all(isinstance(p["line"], int) for p in problems)


@pytest.mark.parametrize(
    ("protocol", "address", "model", "ok"),
    [
        (BusProtocol.DLT645, "000000000001", "x", True),
        (BusProtocol.DLT645, "00000000001", "x", False),
        (BusProtocol.DLT645, "00000000000A", "x", False),
        (BusProtocol.CJT188, "00000012345678", "cjt188-water", True),
        (BusProtocol.CJT188, "000000000001", "cjt188-water", False),
        (BusProtocol.MODBUS_RTU, "247", "acrel-ddsy1352", True),
        (BusProtocol.MODBUS_RTU, "248", "acrel-ddsy1352", False),
        (BusProtocol.MODBUS_TCP, "0", "acrel-ddsy1352", False),
        (BusProtocol.MODBUS_TCP, "1", "no-such-model", False),
    ],
)
def test_meter_problems_per_protocol(protocol: BusProtocol, address: str, model: str, ok: bool) -> None:
    assert (meter_problems(protocol, address, model) == []) is ok


def test_sharding_spreads_sequential_ids_and_honours_pins() -> None:
    ids = [f"gw-a-{n}" for n in range(40)]
    assert {shard_of(i, 2) for i in ids} == {0, 1}
    assert all(owns(i, None, shard_of(i, 3), 3) for i in ids)
    assert owns("gw-x", 1, 1, 2)
    assert not owns("gw-x", 1, 0, 2)


def test_the_store_file_outlives_a_default_instance_id(tmp_path: Path) -> None:
    default = CollectorSettings(data_dir=tmp_path, shard_index=1, shard_count=2)
    assert default.store_path() == tmp_path / "store-shard-1.sqlite3"
    named = CollectorSettings(data_dir=tmp_path, instance_id="collector-7")
    assert named.store_path() == tmp_path / "store-collector-7.sqlite3"
    assert CollectorSettings(environment="test").store_path() is None  # a temporary directory, removed after
    with pytest.raises(ValueError, match="shard_index"):
        CollectorSettings(shard_index=2, shard_count=2)
