"""The codecs' one exception root, `ProtocolError`; every codec raises only these::

ProtocolError            anything wrong with bytes from or for the field
├── FrameError           a frame that cannot be a valid frame (length, start/end byte, layout)
│   └── ChecksumError    a well-formed frame whose checksum does not match
├── ValueEncodingError   a field whose content is not valid (non-BCD nibble, value out of range)
├── DeviceError          the device answered with an error reply (carries the decoded reason)
└── ProfileError         a Modbus device profile is missing, not YAML, or invalid
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every codec error."""


class FrameError(ProtocolError):
    """The bytes are not a valid frame."""


class ChecksumError(FrameError):
    """The frame's checksum byte does not match its content."""


class ValueEncodingError(ProtocolError):
    """A value cannot be encoded or decoded (not BCD, out of range, wrong size)."""


class DeviceError(ProtocolError):
    """The device answered with an error reply."""


class ProfileError(ProtocolError):
    """A profile is missing, not YAML, or invalid; the message names the file and the offending field."""
