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


class DarkRunError(CalibrationError):
    """Runs given as dark runs are not dark runs of the stated gain stages.

    ``problems`` lists every reason, one line each, naming the run; the message joins them
    with newlines.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class CatalogError(PulsetrainError):
    """The constants/run catalogue could not answer or store something."""


class FileFormatError(PulsetrainError):
    """A run file could not be written or read in the European XFEL format."""


class DataShapeError(PulsetrainError, ValueError):
    """An array passed to an analysis or geometry function has the wrong shape or dtype."""


class ConstantNotFoundError(CatalogError, CalibrationError):
    """No constant in the catalogue is valid at the requested time under the requested conditions.

    Besides the message, the attributes describe the query and what came closest:
    ``detector``, ``module``, ``constant_type``, ``conditions``, ``at`` and ``candidates``, a list
    of ``(ConstantRecord, [Mismatch, ...])`` pairs, nearest first.
    """

    def __init__(
        self,
        message: str,
        *,
        detector=None,
        module=None,
        constant_type=None,
        conditions=None,
        at=None,
        candidates=(),
    ):
        super().__init__(message)
        self.detector = detector
        self.module = module
        self.constant_type = constant_type
        self.conditions = conditions
        self.at = at
        self.candidates = list(candidates)


class ChecksumMismatchError(CatalogError):
    """A stored constant's array does not match the checksum, shape or dtype recorded for it."""


class BridgeError(ChannelError):
    """A Karabo bridge server or client was used in a state that forbids it (e.g. stopped)."""


class StorageError(PulsetrainError, OSError):
    """Run files could not be stored: the disk is full, or writing failed with an I/O error.

    The message names the file being written; files closed before the error stay valid.
    """


class TrainOrderError(FileFormatError):
    """A train arrived out of order or twice for the same source; it was not written."""


class BatchJobError(PulsetrainError):
    """A task of an offline batch job (``pulsetrain correct`` / ``reduce``) failed.

    The message names the task (module, sequence file) and the original error, which is also
    chained as ``__cause__`` when it could be transported back from the worker.
    """


class TopologyError(ConfigurationError):
    """A topology file has problems; nothing was started.

    ``problems`` lists them, one line each, naming the file, the table and the key (e.g.
    ``calib.toml:12: [devices."X"] config.gain_mode: 7 is above the maximum 3``); the message
    is these lines joined by newlines.
    """

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class MissingConstantsError(ConstantNotFoundError):
    """Constants a job needs are missing for one or more modules: all of them, said once.

    Besides the attributes of :class:`ConstantNotFoundError` (``module`` and ``constant_type``
    are then lists), ``missing`` maps each missing constant type to the modules lacking it.
    """

    def __init__(self, message: str, *, missing=None, **kwargs):
        super().__init__(message, **kwargs)
        self.missing = dict(missing or {})


class StartupError(PulsetrainError):
    """A topology could not be started: a server did not come up, or a device is in ERROR right
    after it was created (its ``initialize`` failed, its port is taken, ...).

    Everything the start had begun is stopped again before this is raised; the message names the
    server or device and its status.
    """


class AlreadyRunningError(PulsetrainError):
    """A topology is already running on this host: a second supervisor of it is refused.

    The message names the pid of the running supervisor.
    """
