"""Poll statistics: per gateway and fixed window, each meter's poll exchanges on the wire (retries included), the
failures and their kinds, for communication-quality alarms (`PollStats` on `…/gateways/{id}/poll-stats`).

Pure: the poller feeds exchanges in and asks for the finished window with the wall-clock time passed in.

Kinds (`poll_error_kind`): `timeout` (no reply), `checksum` (only frames with a bad checksum came back),
`malformed` (line noise or a reply whose content does not decode), `error_reply` (the meter answered with an error
the read could not do without), `link` (the gateway's TCP link failed), `other` (a driver bug).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from shuidian_collector.errors import BusGarbled, BusLinkError, BusTimeout
from shuidian_protocols.errors import ChecksumError, DeviceError, ProtocolError
from shuidian_shared.messages import PollCounts, PollStats


def error_kind(err: BaseException) -> str:
    """A short label for metrics and logs."""
    if isinstance(err, BusTimeout):
        return "timeout"
    if isinstance(err, BusGarbled):
        return "garbled"
    if isinstance(err, BusLinkError):
        return "link"
    if isinstance(err, DeviceError):
        return "refused"
    if isinstance(err, ProtocolError):
        return "protocol"
    return "other"


def poll_error_kind(err: BaseException) -> str:
    """The PollStats kind of a failed exchange or read."""
    if isinstance(err, BusTimeout):
        return "timeout"
    if isinstance(err, BusGarbled):
        return "checksum" if isinstance(err.cause, ChecksumError) else "malformed"
    if isinstance(err, BusLinkError):
        return "link"
    if isinstance(err, DeviceError):
        return "error_reply"
    if isinstance(err, ProtocolError):
        return "malformed"
    return "other"


@dataclass
class _Counts:
    attempts: int = 0
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class ReadObserver:
    """Watches one meter read: every exchange the channel reports, and how the read ended."""

    def __init__(self, tally: PollTally, meter_id: str) -> None:
        self._tally = tally
        self._meter_id = meter_id
        self._last_error: BaseException | None = None
        self.exchanges = 0

    def __call__(self, error: BaseException | None) -> None:
        self.exchanges += 1
        self._last_error = error
        self._tally.exchange(self._meter_id, error)

    def failed(self, error: BaseException) -> None:
        """The read failed with `error`. An exchange error is already counted; an error found after the exchange
        (an error reply, a value that does not decode) makes the last answered exchange a failure."""
        if error is self._last_error:
            return
        self._tally.unusable(self._meter_id, error, counted=self.exchanges > 0 and self._last_error is None)


class PollTally:
    """One gateway's counts for the current window [start, start + window), windows aligned to the epoch."""

    def __init__(self, window_seconds: float, now: datetime) -> None:
        if window_seconds <= 0:
            raise ValueError("the window must be positive")
        self.window = timedelta(seconds=window_seconds)
        self.window_start = self._aligned(now)
        self._meters: dict[str, _Counts] = {}
        self._down = False

    def _aligned(self, now: datetime) -> datetime:
        step = self.window.total_seconds()
        return datetime.fromtimestamp(now.timestamp() // step * step, UTC)

    @property
    def window_end(self) -> datetime:
        return self.window_start + self.window

    def exchange(self, meter_id: str, error: BaseException | None) -> None:
        """One request on the wire for a poll of `meter_id`: answered (None) or failed."""
        counts = self._meters.setdefault(meter_id, _Counts())
        counts.attempts += 1
        if error is not None:
            counts.failures += 1
            counts.errors[poll_error_kind(error)] += 1
        if isinstance(error, BusLinkError):
            self._down = True

    def unusable(self, meter_id: str, error: BaseException, *, counted: bool) -> None:
        """The last answer of a read could not be used; `counted`: that exchange was counted as answered."""
        counts = self._meters.setdefault(meter_id, _Counts())
        if not counted:
            counts.attempts += 1  # no exchange was counted for it (an error before any request went out)
        counts.failures += 1
        counts.errors[poll_error_kind(error)] += 1

    def gateway_down(self) -> None:
        """The gateway was unreachable at some point of the window."""
        self._down = True

    def roll(self, now: datetime, gateway_id: str, source: str) -> PollStats | None:
        """The finished window's statistics once `now` has passed its end (None before, and for an empty window);
        the next window is the one holding `now`."""
        if now < self.window_end:
            return None
        stats = None
        if self._meters or self._down:
            stats = PollStats(
                source=source,
                gateway_id=gateway_id,
                window_start=self.window_start,
                window_end=self.window_end,
                gateway_down=self._down,
                meters=tuple(
                    PollCounts(
                        meter_id=m, attempts=c.attempts, failures=c.failures, errors=dict(sorted(c.errors.items()))
                    )
                    for m, c in sorted(self._meters.items())
                ),
            )
        self._meters, self._down = {}, False
        self.window_start = self._aligned(now)
        return stats
