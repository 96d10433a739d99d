"""Exceptions raised by pulsetrain.

Every error pulsetrain raises on purpose derives from :class:`PulsetrainError`, so callers can
catch the whole family, or one specific kind.  New exception classes are appended at the end of
this module.
"""


class PulsetrainError(Exception):
    """Base class of all pulsetrain errors."""


class ProtocolError(PulsetrainError, ValueError):
    """A message does not follow the Karabo bridge protocol (malformed, truncated, ...)."""


class ConfigurationError(PulsetrainError, ValueError):
    """A configuration (property value, topology file, command-line option) is invalid."""


class PropertyError(ConfigurationError):
    """A device property cannot be set: wrong type, out of range, read-only or unknown."""


class AuthenticationError(PulsetrainError):
    """A peer did not present valid credentials (control token, CURVE key)."""


class DeviceError(PulsetrainError):
    """A device failed; the device goes to state ERROR with this message."""


class ChannelError(PulsetrainError):
    """A pipeline channel could not be created, connected or used."""


class CalibrationError(PulsetrainError):
    """Calibration constants are missing, mismatched or invalid."""


class CatalogError(PulsetrainError):
    """The constants/run catalogue could not answer or store something."""


class FileFormatError(PulsetrainError):
    """A run file could not be written or read in the European XFEL format."""
