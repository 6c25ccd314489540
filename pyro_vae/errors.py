"""Error types raised by pyro_vae.

Every error carries a one-line message that names the problem and the fix, so the CLI can print it
without a traceback. They subclass ``ValueError`` where the cause is a bad value, so plain Python code
that already catches ``ValueError`` keeps working.
"""


class PyroVAEError(Exception):
    """Base class of every error pyro_vae raises on purpose."""


class DataError(PyroVAEError, ValueError):
    """Missing, corrupt or unsuitable data (wrong shape, values outside the likelihood's support, NaN)."""


class DownloadError(DataError):
    """A dataset could not be downloaded (no network?); ``dataset`` names it, so a caller can give its own advice."""

    def __init__(self, message, dataset):
        super().__init__(message)
        self.dataset = dataset


class ConfigError(PyroVAEError, ValueError):
    """An unknown name, a non-positive size, or a combination of parts that makes no sense."""


class CheckpointError(PyroVAEError):
    """A checkpoint or run folder that is missing, truncated, unsafe, or does not match the model."""


class TrainingError(PyroVAEError, RuntimeError):
    """Training stopped, e.g. the loss became NaN/inf; the last good checkpoint is kept."""
