"""Rule states as stored: every slot's state of one source (meter or gateway) as one JSON object, written small.

Every meter's row is rewritten with each reading and PostgreSQL's cost per row follows its size, so fields at
their defaults are left out and a state object that fills several slots is written once (`StateEncoder`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from typing import Annotated, Any

from pydantic import Field, TypeAdapter
from pydantic_core import SchemaSerializer

from shuidian_alarm.domain.detectors.connectivity import ConnectivityState
from shuidian_alarm.domain.detectors.supply import SupplyMismatchState
from shuidian_alarm.domain.rules import RuleState
from shuidian_alarm.domain.usage import HourlyState

SlotState = RuleState | HourlyState
States = dict[str, SlotState]


@cache
def _adapter() -> TypeAdapter[States]:
    return TypeAdapter(dict[str, Annotated[SlotState, Field(discriminator="kind")]])


_ENCODERS: dict[type[Any], tuple[SchemaSerializer, str]] = {}


# A row in which some slot repeats an earlier slot's state starts with this member (never a slot name); such a
# slot holds the position of that earlier slot, counted from 0 after the marker.
_REFS = '{"$refs":1,'


def decode_states(raw: str | bytes) -> States:
    """A source's states back from `StateEncoder.encode`; raises pydantic's ValidationError on anything else."""
    text_ = raw.decode() if isinstance(raw, bytes) else raw
    if text_.startswith(_REFS):
        try:
            parsed = json.loads(text_)
            del parsed["$refs"]
            values = list(parsed.values())
            text_ = json.dumps({slot: values[v] if type(v) is int else v for slot, v in parsed.items()})
        except (ValueError, TypeError, IndexError, AttributeError):
            pass  # not ours after all: the validator below says what is wrong with it
    return _adapter().validate_json(text_)


def _encode_state(state: SlotState) -> str:
    """One state as JSON that `decode_states` reads back to an equal state, written small: every meter's row is
    rewritten with each reading, and PostgreSQL's cost per row follows its size.

    Fields at their defaults are left out (the reader fills them in again), except `kind`, which tells the
    reader the class. The class's own serializer is called directly: no union to dispatch on and none of
    `TypeAdapter.dump_json`'s per-call options, which would double the cost on the hot path.
    """
    encoder = _ENCODERS.get(type(state))
    if encoder is None:
        encoder = _ENCODERS[type(state)] = (TypeAdapter(type(state)).serializer, f'{{"kind":"{state.kind}"')
    serializer, kind = encoder
    fields = serializer.to_json(state, exclude_defaults=True)
    return kind + "}" if fields == b"{}" else kind + "," + fields[1:].decode()


@cache
def _json_key(slot: str) -> str:
    return json.dumps(slot) + ":"


_TIMED = frozenset({ConnectivityState, SupplyMismatchState})


def pending(states: Iterable[SlotState]) -> bool:
    """Whether any state can change with time alone, so the tick loop must visit it."""
    for state in states:
        if type(state) not in _TIMED:  # most slots: skipped with one look-up
            continue
        if isinstance(state, ConnectivityState):
            links = [state.gateway] if state.gateway is not None else []
            # Offline without an alarm yet, or online again with the alarm still up.
            if any(link.online == link.alarmed for link in [*links, *state.meters.values()]):
                return True
        elif isinstance(state, SupplyMismatchState) and state.mismatch_since is not None and not state.active:
            return True
    return False


class StateEncoder:
    """Encodes sources' states, remembering per source the text of each slot's state object: states are
    immutable, so a slot whose state object is the one encoded last time reuses that text."""

    def __init__(self, max_cached: int = 200_000) -> None:
        self._encoded: dict[str, dict[str, tuple[SlotState, str]]] = {}
        self._max = max_cached

    def forget(self, source: str) -> None:
        self._encoded.pop(source, None)

    def encode(self, source: str, states: States, shared: dict[int, tuple[SlotState, str]] | None = None) -> str:
        """A source's states as one JSON object, as `decode_states` reads them.

        A state object that fills several slots (every rule a reading left settled) is written once: the later
        slots hold the position of the first. That makes the row of a meter with the full electrical register set
        about 40 % shorter, and PostgreSQL's cost per row follows its size. `shared` holds encodings by state
        object (kept alive by the states they encode) for reuse across the sources of a batch: the settled states
        of readings taken at one instant are one object.
        """
        before = self._encoded.get(source, {})
        shared = {} if shared is None else shared
        after: dict[str, tuple[SlotState, str]] = {}
        first: dict[int, str] = {}  # state object → position of the first slot holding it
        parts: list[str] = []
        for position, (slot, state) in enumerate(states.items()):
            known = before.get(slot)
            if known is None or known[0] is not state:
                known = shared.get(id(state))
                if known is None:
                    known = shared[id(state)] = (state, _encode_state(state))
            after[slot] = known
            ref = first.get(id(state))
            if ref is None:
                first[id(state)] = str(position)
                parts.append(_json_key(slot) + known[1])
            else:
                parts.append(_json_key(slot) + ref)
        if len(self._encoded) >= self._max and source not in self._encoded:
            self._encoded.clear()
        self._encoded[source] = after
        return (_REFS if len(first) < len(after) else "{") + ",".join(parts) + "}"
