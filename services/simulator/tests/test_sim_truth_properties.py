"""Property: whatever happens to a meter (time passing, relay moves, spikes, leaks, CT ratio changes,
rollovers, replacements), its truth and its registers stay consistent with each other."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shuidian_simulator.domain.consumption import ConsumptionModel
from shuidian_simulator.domain.meter import REGISTER_MODULUS, SimClock, SimMeter
from shuidian_simulator.estate import Fault, FaultKind, MeterSpec, Profile

FAULTS = st.one_of(
    st.builds(Fault, kind=st.just(FaultKind.SPIKE), factor=st.decimals("1.5", "20", places=1)),
    st.builds(Fault, kind=st.just(FaultKind.LEAK), rate=st.decimals("0", "3", places=2)),
    st.builds(Fault, kind=st.just(FaultKind.CT_RATIO), factor=st.sampled_from([Decimal(1), Decimal(5), Decimal(40)])),
    st.builds(Fault, kind=st.just(FaultKind.ROLLOVER), value=st.decimals("999990", "999999.99", places=2)),
    st.builds(Fault, kind=st.just(FaultKind.REPLACEMENT)),
)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(min_value=0.5, max_value=7200)),
        st.tuples(st.just("relay"), st.booleans()),
        st.tuples(st.just("fault"), FAULTS),
        st.tuples(st.just("clear"), st.sampled_from(list(FaultKind))),
    ),
    max_size=25,
)


START = 1_790_000_000.0  # a fixed real instant: the meter's clock starts here and moves only as the test says


def _no_actuator(delay: float, action: Callable[[], None]) -> None:
    raise AssertionError("relays are moved directly here, never through a command")


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS, seed=st.integers(0, 1000))
def test_truth_registers_tariffs_and_money_agree(operations: list[tuple[str, object]], seed: int) -> None:
    spec = MeterSpec(id="E", address="000000000001", initial_register=Decimal("123.45"), prepaid_money=Decimal(50))
    clock = SimClock(Decimal(60), real=lambda: START, later=_no_actuator)
    meter = SimMeter.create(spec, ConsumptionModel(seed, "E", "electricity", Profile.RESIDENTIAL), clock, seed=seed)
    now = clock.real_start
    since_install = Decimal(0)  # what the truth says the current meter counted
    for op, arg in operations:
        if op == "wait":
            assert isinstance(arg, float)
            now += arg
            before = len(meter.truth)
            meter.advance(now)
            since_install += sum((t.registered for t in meter.truth[before:]), Decimal(0))
        elif op == "relay":
            assert isinstance(arg, bool)
            meter.set_relay(arg, now)
        elif op == "fault":
            assert isinstance(arg, Fault)
            meter.set_fault(arg, now)
            if arg.kind is FaultKind.REPLACEMENT:
                since_install = Decimal(0)
        else:
            assert isinstance(arg, FaultKind)
            meter.clear_fault(arg, now)
    # The truth is complete and adds up to the true consumption; prepaid money follows it exactly.
    assert sum((t.quantity for t in meter.truth), Decimal(0)) == meter.exact
    assert meter.money is not None
    assert abs(meter.money - (Decimal(50) - meter.exact * spec.price)) <= Decimal("1e-20")  # 28-digit arithmetic
    # The register counted what the truth says it did, and the tariff registers split exactly that.
    assert meter.registered == since_install
    assert abs(sum(meter.tariffs) - meter.registered) <= Decimal("1e-20")
    assert meter.register == ((meter.base + meter.registered) % REGISTER_MODULUS).quantize(
        Decimal("0.01"), "ROUND_DOWN"
    )
    assert Decimal(0) <= meter.register < REGISTER_MODULUS
    # Nothing flows while the relay is open.
    for interval in meter.truth:
        opened = [at for at, is_open in meter.relay_history if is_open and at <= interval.real_from]
        closed = [at for at, is_open in meter.relay_history if not is_open and at <= interval.real_from]
        assert not opened or (closed and max(closed) >= max(opened)), "consumption while the relay was open"


def test_truth_says_when_the_meter_was_first_asked_even_if_nothing_had_flowed() -> None:
    # Valve shut from the start: the first read registers nothing, so no truth interval ends there.
    spec = MeterSpec(id="W", address="00000000000001", utility="water", initial_register=Decimal("115.005"))
    clock = SimClock(Decimal(60), real=lambda: START, later=_no_actuator)
    meter = SimMeter.create(spec, ConsumptionModel(1, "W", "water", Profile.RESIDENTIAL), clock)
    meter.relay_open = True
    assert meter.truth_view()["first_advanced_at"] is None  # nobody has asked yet
    meter.advance(START + 10)
    meter.relay_open = False
    meter.advance(START + 7200)
    truth = meter.truth_view()
    assert truth["first_advanced_at"] == START + 10
    assert [i["from"] for i in truth["intervals"]] == [START + 10]  # the first read left no interval behind
