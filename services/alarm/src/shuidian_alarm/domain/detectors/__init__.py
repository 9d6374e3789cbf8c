"""Alarm detectors, one module per rule family: (rule, state, observation, now) → (new state, alarms to raise or clear).

A rule is a frozen value configured per estate, building, meter model or meter (`ScopedRule`,
`domain.rules.resolve_rules`: per rule slot the most specific scope wins). Its state is a frozen value the service
keeps per (source, slot) and persists (`domain.states`), so a duration condition survives a restart. Nothing
here does I/O or reads the clock; at most one alarm per (source, type) is ever open, because a detector raises
only on the edge from quiet to active and clears only on the way back.

Time. Durations of sampled conditions (reading values, hourly consumption, flow) run between observation
timestamps, so a replay raises exactly what live delivery raised; conditions on retained states
(online/offline, relay shadow) run against `now` and also mature on a `Tick`. An observation no newer than
the last one a state took in is ignored (out of order or duplicate), and so is one more than
`FUTURE_TOLERANCE` ahead of `now`, which would otherwise shut out every later observation.

Families: `thresholds` (reading values and flags), `spike` (hourly use against the meter's own baseline),
`water` (leaks: night flow, continuous flow), `connectivity` (gateway and meter offline), `comm_errors` (failed
polls), `supply` (relay or valve against the control shadow), `vacancy` (use in a room without a lease),
`balance` (meter register against the server balance); `debounce` is the duration and hysteresis they share.
`domain.rules` lists them all and dispatches to them.

Gaps. A sampled condition only holds across consecutive observations at most `max_gap` apart: a longer gap
restarts the pending duration at the next observation (no raise from data nobody saw) and never clears an
open alarm (no clear from silence either). Water flow has its own, documented on `WaterLeakRule`.
"""
