"""Control's pure rules: no I/O, no framework; time is a parameter (`now`, or an injected `Clock`).

- `calendar`: how a local date is classified (holiday, 调休, regular, unknown); published years; coverage
- `windows`: protected windows and their rules (`PROTECTION_RULES`), `is_protected`, `next_allowed`
- `policies`: an estate's cut-off policy, 保电 flags, stored settings → the policy decided with
- `decisions`: trip / close / defer / skip for balance events, due deferrals, 保电 changes, reconcile
- `operations`: operator requests (single, batch, scheduled) → a command, a block or nothing per meter
- `lifecycle`: command facts: terminal states, supply terms, retry back-off, which failures are retried
- `schedules`: what a schedule runs and which occurrence is due
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

Clock = Callable[[], datetime]
"""What the adapters read the time from: the system clock in service, a controlled one in tests."""
