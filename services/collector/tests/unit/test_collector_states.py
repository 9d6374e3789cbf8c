"""Device state edges: only changes are announced, once each; a value a poll did not read keeps the announced one;
a quiet fold (gateway outage) records nothing."""

from __future__ import annotations

from shuidian_collector.domain.states import Snapshot, StateEdges, StateRow
from shuidian_shared.messages import RelayState, ValveState


def row(
    online: bool = True, relay: RelayState | None = None, valve: ValveState | None = None, keep: bool | None = None
) -> StateRow:
    return StateRow("m", online, relay, valve, keep, None, None)


def test_first_sight_is_an_edge_then_repeats_are_not() -> None:
    edges = StateEdges()
    first = edges.fold([row(relay=RelayState.CLOSED, keep=False)])
    assert [(e.state, e.online_changed) for e in first] == [(Snapshot(True, RelayState.CLOSED, None, False), True)]
    assert edges.fold([row(relay=RelayState.CLOSED, keep=False)]) == []


def test_a_value_not_read_keeps_the_announced_one() -> None:
    edges = StateEdges()
    edges.fold([row(relay=RelayState.CLOSED, valve=ValveState.OPEN, keep=True)])
    assert edges.fold([row()]) == [], "a poll that read no relay, valve or keep-power changes nothing"
    changed = edges.fold([row(relay=RelayState.OPEN)])
    assert [(e.state, e.online_changed) for e in changed] == [
        (Snapshot(True, RelayState.OPEN, ValveState.OPEN, True), False)
    ]


def test_online_changes_are_flagged() -> None:
    edges = StateEdges()
    edges.fold([row()])
    (offline,) = edges.fold([row(online=False)])
    assert offline.online_changed
    assert not offline.state.online
    (online,) = edges.fold([row()])
    assert online.online_changed
    assert online.state.online


def test_a_quiet_fold_announces_and_records_nothing() -> None:
    edges = StateEdges()
    edges.fold([row()])
    assert edges.fold([row(online=False)], announce=False) == []
    assert edges.fold([row()]) == [], "still announced online: the quiet offline was not recorded"
    (offline,) = edges.fold([row(online=False)])
    assert offline.online_changed
