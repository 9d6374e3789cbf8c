"""The collector's one exception root, `CollectorError`; the codecs raise their own root, `ProtocolError`
(shuidian_protocols), which passes through the transport unchanged::

    CollectorError               (a ShuidianError, shuidian_shared.errors: internal unless said otherwise)
    ├── BusError                 an exchange on a bus failed
    │   ├── BusTimeout           no (acceptable) reply within the timeout
    │   ├── BusGarbled           bytes came back but no valid frame (bad checksum, line noise)
    │   └── BusLinkError         the TCP connection to the gateway could not be made or broke
    ├── CommandRejected          a command refused before anything was written (reported `rejected`, final)
    │   └── CommandUnsupported   the meter cannot do it at all (reported `unsupported`, final)
    ├── WriteRefused             the meter answered a write with an error reply (carries both frames)
    ├── StoreFull                the local store holds its maximum of bounded rows
    └── RequestError             a request the API answers with a problem (status_code, code)
        ├── NotFound             404 no such gateway, bus, meter or state
        ├── AddressTaken         409 an address another meter on the bus already has
        ├── InvalidDevice        422 a meter whose address or model does not suit its bus
        ├── InvalidWindow        400 a report window that is empty or longer than 366 days
        └── WindowBeforeRetention 422 a report window starting before the online edges kept

Pure (it imports only the codecs' errors and the shared base): the domain raises these too. The kit maps every
`RequestError` to problem+json in one place; the others are internal errors if one ever reaches a request.
"""

from __future__ import annotations

from shuidian_protocols.errors import ProtocolError
from shuidian_shared.errors import ShuidianError


class CollectorError(ShuidianError):
    """Root of the collector's own errors."""


class BusError(CollectorError):
    """Root of the transport errors."""


class BusTimeout(BusError):
    """No (acceptable) reply within the timeout."""


class BusGarbled(BusError):
    """Something answered, but not with a valid frame (bad checksum, line noise); `cause` is the last codec error."""

    def __init__(self, message: str, *, cause: ProtocolError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class BusLinkError(BusError):
    """The TCP connection to the gateway could not be made or broke."""


class CommandRejected(CollectorError):
    """The command cannot be carried out as asked (a value the meter cannot take, missing or malformed
    credentials): reported `rejected`, which control treats as final; nothing was written."""


class CommandUnsupported(CommandRejected):
    """The meter's model or protocol cannot do this at all (no such parameter, an unconfirmed register):
    reported `unsupported`, which control treats as final; nothing was written."""


class WriteRefused(CollectorError):
    """The meter refused a write (an error reply): the request and answer frames go into the command result."""

    def __init__(self, frame: bytes, answer: bytes, detail: str) -> None:
        super().__init__(detail)
        self.frame, self.answer = frame, answer


class StoreFull(CollectorError):
    """The local store holds `max_rows` bounded rows; new reading batches and poll statistics are refused."""


class RequestError(CollectorError):
    """A request the API answers with a problem document of `status_code` and `code`."""

    status_code = 400
    code = "bad_request"


class NotFound(RequestError):
    status_code = 404
    code = "not_found"


class AddressTaken(RequestError):
    status_code = 409
    code = "conflict"


class InvalidDevice(RequestError):
    status_code = 422
    code = "invalid_device"


class InvalidWindow(RequestError):
    code = "invalid_window"


class WindowBeforeRetention(RequestError):
    status_code = 422
    code = "window_before_retention"
