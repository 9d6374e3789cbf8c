"""The simulator's one exception root (the codecs raise their own, `ProtocolError`)::

    SimulatorError        (a ShuidianError, shuidian_shared.errors)
    ├── StateError        the kept meter state cannot be restored (not JSON of this version, an entry that does not parse)
    └── AddressRejected   a replacement meter's address does not suit the bus or is taken (control API: 409)

The estate's own checks are pydantic validation errors (`Estate.load`).
"""

from __future__ import annotations

from shuidian_shared.errors import ShuidianError


class SimulatorError(ShuidianError):
    """Root of the simulator's own errors."""


class StateError(SimulatorError):
    """The state file cannot be restored."""


class AddressRejected(SimulatorError):
    """A replacement address that is not valid on the bus, or taken."""
